//! The llmd-cache-manager charm (Juju runs this binary as `dispatch`).

fn main() {
    llmd_charm::cache_manager::run()
}
