//! The llmd-scheduler charm (Juju runs this binary as `dispatch`).

fn main() {
    llmd_charm::scheduler::run()
}
