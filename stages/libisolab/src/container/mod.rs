//! A container, planned: every call a runtime will make, decided before the first one, as data.
//!
//! [`Plan::from`] checks the input and lists the steps in the order they will run, one list
//! for the parent (outside the new namespaces) and one for the child (inside). `Display`
//! prints them (that is `--dry-run`); [`Plan::apply_outside`] and [`Plan::apply_inside`] run
//! them. There is no second description of the work that could drift from the first: each
//! step runs and describes itself from one value.
//!
//! This is where the chapters meet. The plan is chapter 2's, and grows one labelled part per
//! later chapter, which a stage of an earlier chapter never sets:
//!
//! - `args.rs`: the option groups every stage shares ([`ContainerArgs`], [`CommandArgs`]) and
//!   the [`Request`] they make;
//! - `plan.rs`: [`Plan`], from the request to the `apply_*` functions the run calls;
//! - `steps.rs`: the steps, [`Outside`] (the parent's) and [`Inside`] (the child's);
//! - `display.rs`: what `--dry-run` prints;
//! - [`cgroup`]: chapter 3's part, the container's cgroup from the options to the report
//!   (`cgroups` itself knows nothing of containers);
//! - chapter 4's part is [`Plan::move_rootfs`], which the store's overlay uses, and
//!   [`idmapped`]: the base, idmapped into the container's user namespace by the runtime and
//!   attached by the child ([`Plan::idmap_lowers`]).

mod args;
pub mod cgroup;
mod display;
pub mod idmapped;
mod plan;
mod steps;

pub use args::{check_subnet_use, parse_map_base, CommandArgs, ContainerArgs, Request};
pub use plan::Plan;
pub use steps::{Inside, Outside, Veth, CHILD};
