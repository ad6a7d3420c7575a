//! The simulated meters: identities, credentials, MAC ids and demand curves.
//!
//! Everything here is a pure function of `(meter index, seed, time)`, so two
//! simulators started with the same flags answer the same numbers, and tests
//! can derive every credential without asking the server.

use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, RwLock};

use rand::{Rng, RngExt};

use super::faults::{key, stream, unit_for};
use crate::cloud_id::CloudId;

/// Cloud id of meter 0; meter `i` is `FIRST_ID + i`.
pub(crate) const FIRST_ID: u32 = 0x00a0_0000;
/// Largest meter count whose ids still fit in six hex digits.
pub(crate) const MAX_METERS: u32 = 0x0100_0000 - FIRST_ID;

/// EAGLE seconds (since 2000-01-01) of 2020-01-01T00:00:00Z, the zero point of
/// the simulated energy counters.
const COUNTERS_START: u32 = 631_152_000;
/// `sqrt(2π)`: the area under a unit-height Gaussian of width 1.
const SQRT_TAU: f64 = 2.506_628_274_631_000_5;

/// The cloud id of simulated meter `index`, so tests, benchmarks and seeded
/// registries can name meters without talking to the simulator.
pub fn meter_cloud_id(index: u32) -> CloudId {
    CloudId::from_index(FIRST_ID.wrapping_add(index))
}

/// The relay `User` (account e-mail) the simulator accepts for `id`.
pub fn meter_email(id: CloudId) -> String {
    format!("meter-{id}@sim.example")
}

/// The relay `Password` the simulator accepts for `id` until a test changes
/// it with [`super::Simulator::set_password`].
pub fn meter_password(id: CloudId) -> String {
    format!("pw-{id}")
}

/// The registry entry of simulated meter `index`: active, read through the
/// relay, with the credentials the simulator accepts; what the demo, the
/// tests and the benchmarks load.
pub fn meter_user(index: u32) -> crate::registry::User {
    let id = meter_cloud_id(index);
    crate::registry::User {
        cloud_id: id,
        user_email: meter_email(id),
        user_pw: crate::secret::Secret::new(meter_password(id)),
        active: true,
        local: None,
        cadence: Default::default(),
    }
}

/// The EAGLE-200 install code (HTTP Basic password) the simulator accepts for `id`.
pub fn meter_install_code(id: CloudId) -> String {
    format!("ic-{id}")
}

/// Allocation-free form of `user == meter_email(id)` (e-mail compared
/// case-insensitively, as mail systems do).
pub(crate) fn is_meter_email(user: &str, id: CloudId) -> bool {
    let (pre, suf) = ("meter-", "@sim.example");
    user.len() == pre.len() + 6 + suf.len()
        && user.is_char_boundary(pre.len())
        && user.is_char_boundary(pre.len() + 6)
        && user[..pre.len()].eq_ignore_ascii_case(pre)
        && user[pre.len()..pre.len() + 6].eq_ignore_ascii_case(id.as_str())
        && user[pre.len() + 6..].eq_ignore_ascii_case(suf)
}

/// Allocation-free form of `pw == meter_password(id)`.
fn is_default_password(pw: &str, id: CloudId) -> bool {
    pw.strip_prefix("pw-") == Some(id.as_str())
}

/// Allocation-free form of `code == meter_install_code(id)`.
pub(crate) fn is_install_code(code: &str, id: CloudId) -> bool {
    code.strip_prefix("ic-") == Some(id.as_str())
}

/// The EAGLE's ZigBee MAC for `id`: the sample's vendor prefix plus the id.
pub(crate) fn device_mac(id: CloudId) -> u64 {
    0xd8d5_b900_0000_0000 | u64::from(id.as_u32())
}

/// The meter's MAC for `id`: a fixed prefix plus 32 hashed bits, stable
/// across seeds (a meter keeps its hardware whatever the run).
pub(crate) fn meter_mac(id: CloudId) -> u64 {
    0x0013_5001_0000_0000
        | (stream(key(0x004d_4554_4552, u64::from(id.as_u32()))).next_u64() & 0xffff_ffff)
}

/// How one household uses power; drawn once per meter from `(index, seed)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Profile {
    /// Always-on load (fridge, standby), watts.
    base_w: f32,
    /// Height of the morning bump, watts.
    morning_w: f32,
    /// Hour (UTC) of the morning bump's centre.
    morning_h: f32,
    /// Height of the evening peak, watts.
    evening_w: f32,
    /// Hour (UTC) of the evening peak's centre.
    evening_h: f32,
    /// Peak rooftop solar output at midday, watts (0 without solar).
    solar_w: f32,
    /// Relative noise amplitude.
    noise: f32,
    /// Energy delivered before 2020-01-01, Wh.
    delivered_base_wh: u32,
}

impl Profile {
    /// The profile of meter `index` for `seed`; about one meter in five has solar.
    pub(crate) fn new(index: u32, seed: u64) -> Self {
        let mut rng = stream(key(seed ^ 0xa11c_e5ee_d000_0000, u64::from(index)));
        let mut draw = |lo: f64, hi: f64| (lo + (hi - lo) * rng.random::<f64>()) as f32;
        let base_w = draw(150.0, 700.0);
        let morning_w = draw(200.0, 1200.0);
        let morning_h = draw(6.0, 8.5);
        let evening_w = draw(800.0, 3500.0);
        let evening_h = draw(17.5, 20.5);
        let solar = draw(0.0, 1.0) < 0.2;
        let solar_w = draw(2500.0, 7500.0);
        let noise = draw(0.02, 0.08);
        let delivered_base_wh = draw(1.0e6, 2.5e7) as u32;
        Profile {
            base_w,
            morning_w,
            morning_h,
            evening_w,
            evening_h,
            solar_w: if solar { solar_w } else { 0.0 },
            noise,
            delivered_base_wh,
        }
    }

    /// Whether this household exports power around midday.
    pub(crate) fn has_solar(&self) -> bool {
        self.solar_w > 0.0
    }

    /// Household consumption without noise or solar, watts, at hour `h` (UTC).
    fn load_w(&self, h: f64) -> f64 {
        f64::from(self.base_w)
            + f64::from(self.morning_w) * bump(h, f64::from(self.morning_h), 1.0)
            + f64::from(self.evening_w) * bump(h, f64::from(self.evening_h), 1.8)
    }

    /// Solar output, watts, at hour `h` (UTC): a sine arch from 06:00 to 18:00.
    fn solar_at(&self, h: f64) -> f64 {
        if !(6.0..18.0).contains(&h) {
            return 0.0;
        }
        f64::from(self.solar_w) * (std::f64::consts::PI * (h - 6.0) / 12.0).sin().powf(1.5)
    }

    /// Net demand in watts at EAGLE time `eagle_secs` (negative: export),
    /// within the signed 24-bit range. Noise is a hash of
    /// `(seed, meter, second)`, so reads within one second agree.
    pub(crate) fn demand_w(&self, index: u32, seed: u64, eagle_secs: u32) -> i32 {
        // The EAGLE epoch is a UTC midnight, so this is the UTC time of day.
        let h = f64::from(eagle_secs % 86_400) / 3600.0;
        let load = self.load_w(h);
        let jitter = unit_for(key(
            seed ^ 0x6e01_5e00,
            (u64::from(index) << 32) | u64::from(eagle_secs),
        ));
        let noise = (2.0 * jitter - 1.0) * f64::from(self.noise) * load;
        let w = (load + noise - self.solar_at(h)).round();
        w.clamp(-8_388_608.0, 8_388_607.0) as i32
    }

    /// Energy counters `(delivered, received)` in Wh at EAGLE time
    /// `eagle_secs`: monotonic, growing at the curve's daily average.
    pub(crate) fn summation_wh(&self, eagle_secs: u32) -> (u32, u32) {
        let hours = f64::from(eagle_secs.saturating_sub(COUNTERS_START)) / 3600.0;
        let avg_load = f64::from(self.base_w)
            + (f64::from(self.morning_w) + f64::from(self.evening_w) * 1.8) * SQRT_TAU / 24.0;
        // Self-consumed solar cuts imports; the rest of the arch is exported.
        let (import, export) = if self.has_solar() {
            (avg_load * 0.75, f64::from(self.solar_w) * 0.2)
        } else {
            (avg_load, 0.0)
        };
        let delivered = f64::from(self.delivered_base_wh) + import * hours;
        let received = f64::from(self.delivered_base_wh / 20)
            * f64::from(u8::from(self.has_solar()))
            + export * hours;
        (to_u32(delivered), to_u32(received))
    }
}

fn to_u32(x: f64) -> u32 {
    x.clamp(0.0, f64::from(u32::MAX)) as u32
}

/// A unit-height Gaussian bump centred on hour `centre`, wrapping round midnight.
fn bump(h: f64, centre: f64, width: f64) -> f64 {
    let mut d = (h - centre).rem_euclid(24.0);
    if d > 12.0 {
        d -= 24.0;
    }
    (-0.5 * (d / width).powi(2)).exp()
}

/// One meter's precomputed data and live state, in a `Vec` indexed by
/// `cloud id - FIRST_ID` so a request finds it without hashing or locking
/// anything shared.
#[derive(Debug)]
pub(crate) struct MeterState {
    /// Its cloud id.
    pub(crate) id: CloudId,
    /// Its demand curve.
    pub(crate) profile: Profile,
    /// Requests addressed to it (valid credentials or not).
    pub(crate) requests: AtomicU64,
    /// Intact demand readings sent to it.
    pub(crate) served: AtomicU64,
    /// `get_history_data` requests it answered.
    pub(crate) history_requests: AtomicU64,
    /// A test-set password replacing [`meter_password`]; one lock per meter,
    /// so readers never contend across meters.
    password: RwLock<Option<Box<str>>>,
    /// When requests arrived and whether each got a reading, kept only with
    /// `--record-arrivals` (one lock per meter, like the password).
    pub(crate) arrivals: Mutex<Vec<Arrival>>,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arrival {
    /// Milliseconds since the simulator started.
    pub(crate) at_ms: u64,
    /// Whether the answer was a reading (authorized, no injected fault).
    pub(crate) served: bool,
    /// Whether it asked for instantaneous demand (the every-interval poll)
    /// rather than summation, price, history or a device list.
    pub(crate) demand: bool,
}

impl MeterState {
    /// Meter `index` of a simulator seeded with `seed`.
    pub(crate) fn new(index: u32, seed: u64) -> Self {
        MeterState {
            id: meter_cloud_id(index),
            profile: Profile::new(index, seed),
            requests: AtomicU64::new(0),
            served: AtomicU64::new(0),
            history_requests: AtomicU64::new(0),
            password: RwLock::new(None),
            arrivals: Mutex::new(Vec::new()),
        }
    }

    /// Whether `pw` is this meter's current relay password.
    pub(crate) fn password_matches(&self, pw: &str) -> bool {
        let guard = self.password.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_deref() {
            Some(current) => current == pw,
            None => is_default_password(pw, self.id),
        }
    }

    /// Replaces this meter's relay password.
    pub(crate) fn set_password(&self, pw: &str) {
        let mut guard = self.password.write().unwrap_or_else(|e| e.into_inner());
        *guard = Some(pw.into());
    }
}

/// The index of `id` among `count` simulated meters, if it is one of them.
pub(crate) fn meter_index(id: CloudId, count: usize) -> Option<usize> {
    let i = id.as_u32().checked_sub(FIRST_ID)? as usize;
    (i < count).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EAGLE seconds at `hour:00` UTC on 2025-01-15 (the samples' day).
    fn at_hour(hour: u32) -> u32 {
        0x2f1a_4c00 - 0x2f1a_4c00 % 86_400 + hour * 3600
    }

    #[test]
    fn credentials_follow_the_documented_pattern() {
        let id = meter_cloud_id(3);
        assert_eq!(id.as_str(), "a00003");
        assert_eq!(meter_email(id), "meter-a00003@sim.example");
        assert!(is_meter_email("Meter-A00003@sim.example", id));
        assert!(!is_meter_email("meter-a00004@sim.example", id));
        assert!(!is_meter_email("meter-a00003@sim.exampl", id));
        assert!(is_default_password(&meter_password(id), id));
        assert!(is_install_code(&meter_install_code(id), id));
        assert!(!is_install_code("ic-a00004", id));
        assert_eq!(format!("0x{:016x}", device_mac(id)), "0xd8d5b90000a00003");
        assert_eq!(format!("0x{:016x}", meter_mac(id)).len(), 18);
    }

    #[test]
    fn about_one_in_five_has_solar_and_exports_at_noon() {
        let profiles: Vec<Profile> = (0..1000).map(|i| Profile::new(i, 1)).collect();
        let solar = profiles.iter().filter(|p| p.has_solar()).count();
        assert!((150..250).contains(&solar), "{solar}");
        for (i, p) in profiles.iter().enumerate() {
            let noon = p.demand_w(i as u32, 1, at_hour(12));
            let evening = p.demand_w(i as u32, 1, at_hour(19));
            let night = p.demand_w(i as u32, 1, at_hour(3));
            assert_eq!(p.has_solar(), noon < 0, "meter {i}: {noon} W at noon");
            assert!(
                evening > night,
                "meter {i}: evening {evening} W, night {night} W"
            );
            assert!((100..800).contains(&night), "meter {i}: {night} W at night");
        }
    }

    #[test]
    fn deterministic_per_seed_and_counters_grow() {
        let a = Profile::new(7, 42);
        assert_eq!(a, Profile::new(7, 42));
        assert_ne!(a, Profile::new(7, 43));
        let t = at_hour(9);
        assert_eq!(a.demand_w(7, 42, t), a.demand_w(7, 42, t));
        let (d0, r0) = a.summation_wh(t);
        let (d1, r1) = a.summation_wh(t + 3600);
        assert!(d1 > d0 && r1 >= r0);
    }

    #[test]
    fn password_can_change() {
        let m = MeterState::new(0, 1);
        assert!(m.password_matches("pw-a00000"));
        m.set_password("new");
        assert!(!m.password_matches("pw-a00000"));
        assert!(m.password_matches("new"));
        assert_eq!(meter_index(m.id, 1), Some(0));
        assert_eq!(meter_index(meter_cloud_id(1), 1), None);
        assert_eq!(meter_index(CloudId::from_index(5), 10), None);
    }
}
