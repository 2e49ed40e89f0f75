# The classroom's verbs. Nothing in the README needs `just`; these are shortcuts.
# `just --list` shows them.

default:
    @just --list

# Install what is missing and build everything (debug)
setup:
    scripts/setup

# Build the default busybox rootfs into DIR
rootfs DIR="rootfs": setup
    target/debug/rootfs-builder busybox {{DIR}}

# The isolation matrix: host vs each stage (needs root)
compare *ARGS:
    scripts/isolab compare {{ARGS}}

# What this machine supports
doctor:
    scripts/isolab doctor

# Stage 1: a shell in a chroot jail built from DIR
stage1 DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage1-chroot run --rootfs {{DIR}} -- /bin/sh

# Stage 1: watch root break out of the jail
escape DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage1-chroot escape --rootfs {{DIR}}

# Render the book to book/build (open book/build/index.html)
book:
    cargo run --quiet -p isolab-tests --bin build-book

# Every test, as the README and CI run them
test:
    scripts/test

# Stage 2: a shell in new namespaces (PID 1, own hostname, own network)
stage2 DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage2-namespaces run --rootfs {{DIR}} -- /bin/sh

# Stage 2: print every system call the container would make, without running it
plan DIR="rootfs": (rootfs DIR)
    target/debug/stage2-namespaces run --rootfs {{DIR}} --dry-run -- /bin/sh

# Stage 3: a shell in its own cgroup (64 MiB, 32 processes, half a CPU); a report on exit
stage3 DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage3-cgroups run --rootfs {{DIR}} --memory 64M --pids 32 --cpus 0.5 -- /bin/sh

# Stage 3: a memory hog, a fork bomb and a busy loop meet the limits
limits DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage3-cgroups run --rootfs {{DIR}} --memory 64M --pids 32 --cpus 0.5 -- /isolab/probe --human --check resources --check memory-hog --check fork-bomb --check cpu-share

# Remove the cgroups that killed runtimes left behind
gc:
    scripts/isolab gc

# Stage 4: a container over the read-only base, in a store under ./store
stage4 DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage4-overlay run --root store --rootfs {{DIR}} -- /bin/sh

# Stage 4: 50 containers with each storage driver: time and disk
bench-storage DIR="rootfs": (rootfs DIR)
    sudo target/debug/stage4-overlay bench-storage --root store --rootfs {{DIR}} --count 50

# Lab: write the starter of STAGE into DIR (the reference with its LAB regions as todo!s)
lab STAGE DIR: setup
    target/debug/isolab lab new {{STAGE}} {{DIR}}

# Lab: grade a student's stage binary, black-box (needs root)
grade STAGE BIN: setup
    sudo target/debug/isolab grade {{STAGE}} --bin {{BIN}}

# Lab VM: check lab-vm/'s recipes as far as this machine can (syntax, schema, a 9p boot)
lab-vm-check:
    lab-vm/check
