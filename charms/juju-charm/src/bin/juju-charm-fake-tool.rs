//! The fake hook tools as their own program, for charms not built on `juju_charm::run`:
//! `Harness::tool(path)` (or `JUJU_CHARM_FAKE_TOOL`) links every tool name to it.

fn main() {
    std::process::exit(juju_charm::testing::tool_main())
}
