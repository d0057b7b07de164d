//! The series budget: how many series apps' reports may add to `/metrics`,
//! per loop, per app and in all. Caps on each label alone multiply (tasks ×
//! exceptions × loops × apps); the budget is counted where a series is
//! born, so no input inside the caps can grow a scrape past it. A label
//! set the budget cannot afford folds into `other`, which each family may
//! always have once per loop or app.

/// Series every loop has whatever it reports: the lag histogram (7 buckets,
/// `+Inf`, sum, count) and 10 more (stalls, blocked, last heartbeat,
/// restarts, stall, up, processes, pending, created, slow callbacks).
pub(super) const LOOP_SERIES: usize = 20;
/// Series of one pool: 5 gauges and 3 counters.
pub(super) const POOL_SERIES: usize = 8;

/// Series taken by one loop or one app.
#[derive(Debug, Default)]
pub(super) struct Taken(usize);

#[derive(Debug)]
pub(super) struct Budget {
    pub(super) per_loop: usize,
    pub(super) per_app: usize,
    pub(super) total: usize,
    used: usize,
}

impl Budget {
    pub(super) fn new(per_loop: usize, per_app: usize, total: usize) -> Self {
        Self {
            per_loop,
            per_app,
            total,
            used: 0,
        }
    }

    /// New caps from a reloaded config; what is taken stays taken.
    pub(super) fn set_caps(&mut self, per_loop: usize, per_app: usize, total: usize) {
        (self.per_loop, self.per_app, self.total) = (per_loop, per_app, total);
    }

    /// Takes `n` series for a loop of an app, if the loop, the app and the
    /// whole budget can afford them.
    pub(super) fn take_for_loop(&mut self, app: &mut Taken, lp: &mut Taken, n: usize) -> bool {
        if lp.0 + n > self.per_loop {
            return false;
        }
        let taken = self.take_for_app(app, n);
        if taken {
            lp.0 += n;
        }
        taken
    }

    /// Takes `n` series for an app (a new loop's fixed series, a pool).
    pub(super) fn take_for_app(&mut self, app: &mut Taken, n: usize) -> bool {
        if app.0 + n > self.per_app || self.used + n > self.total {
            return false;
        }
        app.0 += n;
        self.used += n;
        true
    }

    /// Gives back what a removed loop took (its series and its fixed ones).
    pub(super) fn release_loop(&mut self, app: &mut Taken, lp: &Taken) {
        let n = lp.0 + LOOP_SERIES;
        app.0 = app.0.saturating_sub(n);
        self.used = self.used.saturating_sub(n);
    }

    /// Gives back `n` series of an app (a removed pool).
    pub(super) fn release_for_app(&mut self, app: &mut Taken, n: usize) {
        app.0 = app.0.saturating_sub(n);
        self.used = self.used.saturating_sub(n);
    }

    /// Gives back whatever a removed app still held.
    pub(super) fn release_app(&mut self, app: &Taken) {
        self.used = self.used.saturating_sub(app.0);
    }

    pub(super) fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_loop_per_app_and_in_all() {
        let mut budget = Budget::new(10, 15, 20);
        let (mut app, mut a, mut b) = (Taken::default(), Taken::default(), Taken::default());
        assert!(budget.take_for_loop(&mut app, &mut a, 10));
        assert!(!budget.take_for_loop(&mut app, &mut a, 1), "per loop");
        assert!(budget.take_for_loop(&mut app, &mut b, 5));
        assert!(!budget.take_for_loop(&mut app, &mut b, 1), "per app");
        let mut other_app = Taken::default();
        assert!(budget.take_for_app(&mut other_app, 5));
        assert!(!budget.take_for_app(&mut other_app, 1), "in all");
        budget.release_app(&other_app);
        assert_eq!(budget.used(), 15);
    }
}
