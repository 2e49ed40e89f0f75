//! Reading an ELF file the way the dynamic loader reads it.
//!
//! To find a program's libraries, `ld.so` looks at three things and nothing else (`man 5 elf`):
//! the *ELF header* (class, byte order and machine: a 64-bit x86-64 program can only use
//! 64-bit x86-64 libraries), the *program headers* (`PT_INTERP` names the loader itself,
//! `PT_DYNAMIC` points at the dynamic section), and the *dynamic section*, whose entries name
//! the libraries (`DT_NEEDED`), where to look for them (`DT_RPATH`, `DT_RUNPATH`), the object's
//! own name (`DT_SONAME`) and a few flags. Section headers are for linkers and debuggers; a
//! stripped binary may not have them, and the loader never reads them. So we parse exactly the
//! same parts, with `goblin`, and put them in a small [`ElfInfo`].

use std::fs::File;
use std::io::Read;
use std::path::Path;

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::dynamic::{self, Dynamic};
use goblin::elf::header::{self, Header};
use goblin::elf::program_header::{self, ProgramHeader};
use goblin::elf::Elf;
use goblin::strtab::Strtab;

use crate::error::{Error, IoResultExt, Result};

/// The four bytes every ELF file starts with: `\x7fELF`.
pub const MAGIC: &[u8; 4] = b"\x7fELF";

/// What makes two objects able to live in one process: the loader refuses a library whose
/// class, byte order or machine differs from the program's (`man 5 elf`, `e_ident`, `e_machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abi {
    /// `ELFCLASS64` (true) or `ELFCLASS32`.
    pub is_64: bool,
    /// `ELFDATA2LSB` (true) or `ELFDATA2MSB`.
    pub little_endian: bool,
    /// `e_machine`, e.g. `EM_X86_64` (62).
    pub machine: u16,
    /// `e_flags`: machine-specific (on ARM it says hard- or soft-float).
    pub flags: u32,
}

impl Abi {
    /// Can an object with this ABI be loaded into a process whose program has `program`'s?
    /// The same test `ld.so` makes before it maps a candidate file (glibc's `open_verify`).
    pub fn compatible_with(&self, program: &Abi) -> bool {
        self.is_64 == program.is_64
            && self.little_endian == program.little_endian
            && self.machine == program.machine
    }

    /// The Debian multiarch triplet, which names the architecture's library directory
    /// (`/lib/x86_64-linux-gnu`). `None` for a machine we do not know.
    pub fn multiarch_triplet(&self) -> Option<&'static str> {
        Some(match (self.machine, self.is_64, self.little_endian) {
            (header::EM_X86_64, true, _) => "x86_64-linux-gnu",
            (header::EM_X86_64, false, _) => "x86_64-linux-gnux32",
            (header::EM_386, false, _) => "i386-linux-gnu",
            (header::EM_AARCH64, true, true) => "aarch64-linux-gnu",
            // EF_ARM_ABI_FLOAT_HARD: the program passes floats in VFP registers (armhf).
            (header::EM_ARM, false, true) if self.flags & 0x400 != 0 => "arm-linux-gnueabihf",
            (header::EM_ARM, false, true) => "arm-linux-gnueabi",
            (header::EM_RISCV, true, true) => "riscv64-linux-gnu",
            (header::EM_PPC64, true, true) => "powerpc64le-linux-gnu",
            (header::EM_PPC64, true, false) => "powerpc64-linux-gnu",
            (header::EM_S390, true, false) => "s390x-linux-gnu",
            (header::EM_MIPS, true, true) => "mips64el-linux-gnuabi64",
            (header::EM_MIPS, false, true) => "mipsel-linux-gnu",
            _ => return None,
        })
    }

    /// What the kernel passes as `AT_PLATFORM` (`man 3 getauxval`) on this machine, which is
    /// what `$PLATFORM` expands to in a search path. `None` for a machine we do not know.
    pub fn platform(&self) -> Option<&'static str> {
        Some(match (self.machine, self.is_64) {
            (header::EM_X86_64, true) => "x86_64",
            (header::EM_386, false) => "i686",
            (header::EM_AARCH64, true) => "aarch64",
            (header::EM_ARM, false) => "v7l",
            (header::EM_RISCV, true) => "riscv64",
            (header::EM_PPC64, true) => "power8",
            (header::EM_S390, true) => "z13",
            _ => return None,
        })
    }

    /// The flags `ldconfig` writes into `/etc/ld.so.cache` for libraries of this ABI, and
    /// which a loader of this ABI insists on (glibc's `_dl_cache_check_flags`, values from
    /// `sysdeps/generic/ldconfig.h`): `FLAG_ELF_LIBC6` (3) plus a "required" byte.
    pub fn ld_cache_flags(&self) -> Option<i32> {
        const FLAG_ELF_LIBC6: i32 = 0x0003;
        let required = match (self.machine, self.is_64) {
            (header::EM_X86_64, true) => 0x0300,  // FLAG_X8664_LIB64
            (header::EM_X86_64, false) => 0x0800, // FLAG_X8664_LIBX32
            (header::EM_386, false) => 0x0000,
            (header::EM_AARCH64, true) => 0x0a00, // FLAG_AARCH64_LIB64
            (header::EM_ARM, false) if self.flags & 0x400 != 0 => 0x0900, // FLAG_ARM_LIBHF
            (header::EM_ARM, false) => 0x0b00,    // FLAG_ARM_LIBSF
            (header::EM_PPC64, true) => 0x0500,   // FLAG_POWERPC_LIB64
            (header::EM_S390, true) => 0x0400,    // FLAG_S390_LIB64
            (header::EM_RISCV, true) => 0x1000,   // FLAG_RISCV_FLOAT_ABI_DOUBLE
            _ => return None,
        };
        Some(FLAG_ELF_LIBC6 | required)
    }
}

impl std::fmt::Display for Abi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = if self.is_64 { 64 } else { 32 };
        let order = if self.little_endian { "LSB" } else { "MSB" };
        let machine = match self.machine {
            header::EM_X86_64 => "x86-64".to_string(),
            header::EM_386 => "i386".to_string(),
            header::EM_AARCH64 => "aarch64".to_string(),
            header::EM_ARM => "arm".to_string(),
            header::EM_RISCV => "riscv".to_string(),
            other => format!("machine {other}"),
        };
        write!(f, "ELF {bits}-bit {order} {machine}")
    }
}

/// Everything the loader reads from one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// Class, byte order and machine.
    pub abi: Abi,
    /// `e_type`: `ET_EXEC` (2) for a fixed-address program, `ET_DYN` (3) for a shared library
    /// or a position-independent program.
    pub kind: u16,
    /// `PT_INTERP`: the loader the kernel starts for this program (`/lib64/ld-linux-x86-64.so.2`).
    /// Absent in a statically linked program.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in order: the libraries this object needs, by name.
    pub needed: Vec<String>,
    /// `DT_SONAME`: the name this library answers to.
    pub soname: Option<String>,
    /// `DT_RPATH`: colon-separated directories, old style (see [`crate::elf_deps`]).
    pub rpath: Option<String>,
    /// `DT_RUNPATH`: colon-separated directories, new style.
    pub runpath: Option<String>,
    /// `DF_1_NODEFLIB` in `DT_FLAGS_1`: do not search the default directories for this
    /// object's libraries.
    pub nodeflib: bool,
}

impl ElfInfo {
    /// Can the loader (or the kernel) load it? Programs and shared libraries can (`ET_EXEC`,
    /// `ET_DYN`); relocatable objects (`.o`, `ET_REL`) and core dumps cannot.
    pub fn is_loadable(&self) -> bool {
        matches!(self.kind, header::ET_EXEC | header::ET_DYN)
    }

    /// Does this object need nothing at run time (no loader, no libraries)?
    pub fn is_static(&self) -> bool {
        self.interpreter.is_none() && self.needed.is_empty()
    }
}

/// Does `path` start with the ELF magic? Reads four bytes; a short file is not ELF.
pub fn is_elf(path: &Path) -> Result<bool> {
    let mut file = File::open(path).io("open", path)?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == MAGIC),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(error).io("read", path),
    }
}

/// Reads and parses the ELF file at `path`.
pub fn read(path: &Path) -> Result<ElfInfo> {
    let bytes = std::fs::read(path).io("read", path)?;
    parse(&bytes).map_err(|reason| Error::BadElf { path: path.to_path_buf(), reason })
}

/// Parses an ELF image: header, program headers, dynamic section. The error is in words.
pub fn parse(bytes: &[u8]) -> std::result::Result<ElfInfo, String> {
    if !bytes.starts_with(MAGIC) {
        return Err("it does not start with \\x7fELF".into());
    }
    let header = Elf::parse_header(bytes).map_err(|error| format!("bad ELF header: {error}"))?;
    let is_64 = match header.e_ident[header::EI_CLASS] {
        header::ELFCLASS64 => true,
        header::ELFCLASS32 => false,
        other => return Err(format!("unknown ELF class {other}")),
    };
    let little_endian = match header.e_ident[header::EI_DATA] {
        header::ELFDATA2LSB => true,
        header::ELFDATA2MSB => false,
        other => return Err(format!("unknown ELF byte order {other}")),
    };
    let ctx = Ctx::new(
        if is_64 { Container::Big } else { Container::Little },
        if little_endian { Endian::Little } else { Endian::Big },
    );
    let abi = Abi { is_64, little_endian, machine: header.e_machine, flags: header.e_flags };

    let program_headers = program_headers(bytes, &header, ctx)?;
    let interpreter = program_headers
        .iter()
        .find(|ph| ph.p_type == program_header::PT_INTERP)
        .map(|ph| c_string_at(bytes, ph.p_offset as usize, ph.p_filesz as usize))
        .transpose()?;

    let mut info = ElfInfo {
        abi,
        kind: header.e_type,
        interpreter,
        needed: Vec::new(),
        soname: None,
        rpath: None,
        runpath: None,
        nodeflib: false,
    };

    // A static program has no PT_DYNAMIC, hence nothing more to read.
    let Some(dynamic) = Dynamic::parse(bytes, &program_headers, ctx)
        .map_err(|error| format!("bad dynamic section: {error}"))?
    else {
        return Ok(info);
    };
    // Every name in the dynamic section is an offset into DT_STRTAB (goblin has already turned
    // its address into a file offset with the program headers, as the loader would map it).
    let strings = Strtab::parse(bytes, dynamic.info.strtab, dynamic.info.strsz, 0)
        .map_err(|error| format!("bad DT_STRTAB: {error}"))?;
    let string = |offset: u64, tag: &str| {
        strings
            .get_at(offset as usize)
            .map(str::to_string)
            .ok_or_else(|| format!("{tag} points outside DT_STRTAB"))
    };
    let mut rpaths = Vec::new();
    let mut runpaths = Vec::new();
    for entry in &dynamic.dyns {
        match entry.d_tag {
            dynamic::DT_NEEDED => info.needed.push(string(entry.d_val, "DT_NEEDED")?),
            dynamic::DT_SONAME => info.soname = Some(string(entry.d_val, "DT_SONAME")?),
            dynamic::DT_RPATH => rpaths.push(string(entry.d_val, "DT_RPATH")?),
            dynamic::DT_RUNPATH => runpaths.push(string(entry.d_val, "DT_RUNPATH")?),
            dynamic::DT_FLAGS_1 => info.nodeflib = entry.d_val & dynamic::DF_1_NODEFLIB != 0,
            _ => {}
        }
    }
    // Linkers write one entry of each; should there be several, the loader would use all.
    info.rpath = (!rpaths.is_empty()).then(|| rpaths.join(":"));
    info.runpath = (!runpaths.is_empty()).then(|| runpaths.join(":"));
    Ok(info)
}

fn program_headers(
    bytes: &[u8],
    header: &Header,
    ctx: Ctx,
) -> std::result::Result<Vec<ProgramHeader>, String> {
    ProgramHeader::parse(bytes, header.e_phoff as usize, header.e_phnum as usize, ctx)
        .map_err(|error| format!("bad program headers: {error}"))
}

/// The NUL-terminated string in `bytes[offset..offset + len]` (how PT_INTERP stores its path).
fn c_string_at(bytes: &[u8], offset: usize, len: usize) -> std::result::Result<String, String> {
    let raw = offset
        .checked_add(len)
        .and_then(|end| bytes.get(offset..end))
        .ok_or("PT_INTERP points outside the file")?;
    let raw = raw.split(|&byte| byte == 0).next().unwrap_or_default();
    String::from_utf8(raw.to_vec()).map_err(|_| "PT_INTERP is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hosts_bash_like_the_loader() {
        let info = read(Path::new("/bin/bash")).unwrap();
        assert!(info.interpreter.as_deref().unwrap().contains("ld-linux"), "{info:?}");
        assert!(info.needed.iter().any(|name| name == "libc.so.6"), "{info:?}");
        assert!(!info.is_static());
    }

    #[test]
    fn a_static_busybox_has_no_interpreter() {
        let busybox = Path::new("/usr/bin/busybox");
        if !busybox.exists() {
            let why = "/usr/bin/busybox is not installed (apt-get install busybox-static)";
            return crate::skip("a_static_busybox_has_no_interpreter", why);
        }
        let info = read(busybox).unwrap();
        assert_eq!(info.interpreter, None);
        assert!(info.is_static(), "{info:?}");
    }

    #[test]
    fn libc_has_a_soname() {
        let info = match read(Path::new("/lib/x86_64-linux-gnu/libc.so.6")) {
            Ok(info) => info,
            Err(error) => return crate::skip("libc_has_a_soname", &format!("not x86_64: {error}")),
        };
        assert_eq!(info.soname.as_deref(), Some("libc.so.6"));
        assert_eq!(info.abi.multiarch_triplet(), Some("x86_64-linux-gnu"));
        assert_eq!(info.abi.ld_cache_flags(), Some(0x0303));
    }

    #[test]
    fn text_is_not_elf() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("script");
        std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
        assert!(!is_elf(&script).unwrap());
        let error = read(&script).unwrap_err().to_string();
        assert!(error.ends_with("is not a usable ELF file: it does not start with \\x7fELF"));
        std::fs::write(&script, "").unwrap();
        assert!(!is_elf(&script).unwrap());
    }
}
