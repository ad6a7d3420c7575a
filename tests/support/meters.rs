//! Users for the simulator's meters: the registry entries tests put in
//! Redis or write to a users file, with the credentials the simulator
//! accepts.

use rainforest::registry::User;
use rainforest::simulator;

/// The user of simulated meter `i`, active, polled through the relay.
pub fn sim_user(i: u32) -> User {
    simulator::meter_user(i)
}

/// `users` as a users file holds them, one line each.
pub fn users_text(users: &[User]) -> String {
    users.iter().map(|u| u.to_file_line() + "\n").collect()
}
