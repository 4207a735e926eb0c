//! The llmd-decode charm (Juju runs this binary as `dispatch`).

fn main() {
    llmd_charm::worker::run(llmd_charm::worker::Role::Decode)
}
