//! The HardKuma learning-rate schedule (ALGORITHMS.md §2.3): linear warm-up over the first 20%
//! of the steps from a floor of 0.1, flat, then linear decay over the last 20% to the floor.

const SHARE: f64 = 0.2;
const FLOOR: f64 = 0.1;

/// The multiplier of the base learning rate at `step` (0-based) of `steps`.
pub fn lr_factor(step: usize, steps: usize) -> f64 {
    let ramp = (SHARE * steps as f64).max(1.0);
    let up = FLOOR + (1.0 - FLOOR) * (step as f64 / ramp).min(1.0);
    let down = FLOOR + (1.0 - FLOOR) * ((steps - 1 - step.min(steps - 1)) as f64 / ramp).min(1.0);
    up.min(down)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_stays_flat_and_decays_to_the_floor() {
        let f: Vec<f64> = (0..100).map(|s| lr_factor(s, 100)).collect();
        assert!((f[0] - 0.1).abs() < 1e-12 && (f[99] - 0.1).abs() < 1e-12);
        assert!((f[10] - 0.55).abs() < 1e-12);
        assert!(f[20..80].iter().all(|&v| v == 1.0));
        assert!(f.windows(2).take(20).all(|w| w[1] > w[0]));
        assert_eq!(lr_factor(0, 1), 0.1);
    }
}
