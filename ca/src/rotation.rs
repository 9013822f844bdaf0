//! The CA rotation state machine, as pure logic: meshd persists a [`Rotation`], feeds it what
//! it observes of the fleet ([`FleetView`]), and does what the machine's state asks for (which
//! roots the bundle holds, which CA signs, which re-issue directive is in force). No I/O here,
//! so every transition is unit-tested and a restart resumes from the persisted value.
//!
//! Phases (DESIGN.md, "Rotations without app changes"):
//! 1. `Prepare`: the new root joins the bundle; done when every connected sidecar ACKed a
//!    bundle holding both roots.
//! 2. `Switch`: the new CA signs; sidecars are told to re-issue before `reissue_before`
//!    (each picks a random moment in the window, so the CA sees a smooth rate); done when every
//!    connected sidecar applied the directive and no live certificate of the old CA remains
//!    that a newer one has not superseded.
//! 3. `Finalize`: the old root leaves the bundle; done when every connected sidecar ACKed the
//!    bundle without it. Then `Done`.
//!
//! Until `Finalize`, a rollback returns to the old CA: from `Prepare` at once (drop the new
//! root), from `Switch` through `RollingBack` (the old CA signs again and sidecars re-issue,
//! both roots stay trusted meanwhile, then the new root leaves). Automatic mode moves on as
//! soon as a gate is met; manual mode waits at each gate for `next`. A paused rotation never
//! moves on by itself.

/// Where a rotation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Prepare,
    Switch,
    Finalize,
    Done,
    RollingBack,
    RolledBack,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepare => "prepare",
            Self::Switch => "switch",
            Self::Finalize => "finalize",
            Self::Done => "done",
            Self::RollingBack => "rolling-back",
            Self::RolledBack => "rolled-back",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Prepare,
            Self::Switch,
            Self::Finalize,
            Self::Done,
            Self::RollingBack,
            Self::RolledBack,
        ]
        .into_iter()
        .find(|p| p.as_str() == s)
    }

    /// Whether the rotation is over (nothing more will happen).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::RolledBack)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Automatic,
    Manual,
}

/// A rotation in progress (or finished), as persisted.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rotation {
    /// Grows with every rotation; the re-issue directives carry it as their generation.
    pub generation: u64,
    pub phase: Phase,
    pub mode: Mode,
    pub paused: bool,
    /// Fingerprints of the old and the new root.
    pub old_root: String,
    pub new_root: String,
    /// Fingerprints of the old and the new signing certificate (the root, or an intermediate).
    pub old_signer: String,
    pub new_signer: String,
    /// The stagger window of re-issues, seconds.
    pub window_secs: u64,
    /// Unix seconds when the current phase began.
    pub phase_started_at: i64,
    /// In `Switch` / `RollingBack`: sidecars re-issue before this time (unix seconds).
    pub reissue_before: i64,
    /// The last reason the machine is waiting, for status displays.
    pub waiting_for: String,
}

/// What meshd observes of the fleet, for the current rotation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetView {
    /// Connected sidecars.
    pub connected: usize,
    /// Connected sidecars that ACKed the bundle the current phase wants them to hold.
    pub bundle_acked: usize,
    /// Connected sidecars that applied the current re-issue directive (hold a certificate from
    /// the CA the phase wants).
    pub reissued: usize,
    /// Live certificates of the CA being retired that no newer certificate superseded.
    pub live_retiring_certs: u64,
    /// Names of connected sidecars that are not done with the current phase (a few, for display).
    pub stragglers: Vec<String>,
}

/// What meshd must make true for the current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Fingerprints of the roots the trust bundle holds, in order.
    pub bundle_roots: Vec<String>,
    /// Fingerprint of the signing certificate that signs new leaves.
    pub signer: String,
    /// A re-issue directive in force: (generation, reissue_before).
    pub directive: Option<(u64, i64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationError {
    #[error("the rotation is {0}: nothing to do")]
    Finished(&'static str),
    #[error("a rotation can be rolled back only before finalize (it is in {0})")]
    TooLateToRollBack(&'static str),
    #[error("the rotation is paused: resume it first")]
    Paused,
    #[error("the current phase {phase} is not done yet: {waiting}")]
    GateNotMet {
        phase: &'static str,
        waiting: String,
    },
}

/// Progress of the current phase, for status displays.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

// === impl Rotation ===

impl Rotation {
    /// Starts a rotation from `old` to `new` (fingerprints of roots and signers).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        generation: u64,
        mode: Mode,
        old_root: &str,
        old_signer: &str,
        new_root: &str,
        new_signer: &str,
        window_secs: u64,
        now: i64,
    ) -> Self {
        Self {
            generation,
            phase: Phase::Prepare,
            mode,
            paused: false,
            old_root: old_root.into(),
            new_root: new_root.into(),
            old_signer: old_signer.into(),
            new_signer: new_signer.into(),
            window_secs,
            phase_started_at: now,
            reissue_before: 0,
            waiting_for: String::new(),
        }
    }

    /// What the current state requires of the bundle, the signer and the directives.
    pub fn effects(&self) -> Effects {
        let both = if self.old_root == self.new_root {
            vec![self.old_root.clone()]
        } else {
            vec![self.old_root.clone(), self.new_root.clone()]
        };
        match self.phase {
            Phase::Prepare => Effects {
                bundle_roots: both,
                signer: self.old_signer.clone(),
                directive: None,
            },
            Phase::Switch => Effects {
                bundle_roots: both,
                signer: self.new_signer.clone(),
                directive: Some((self.generation * 2, self.reissue_before)),
            },
            Phase::Finalize | Phase::Done => Effects {
                bundle_roots: vec![self.new_root.clone()],
                signer: self.new_signer.clone(),
                directive: None,
            },
            Phase::RollingBack => Effects {
                bundle_roots: both,
                signer: self.old_signer.clone(),
                directive: Some((self.generation * 2 + 1, self.reissue_before)),
            },
            Phase::RolledBack => Effects {
                bundle_roots: vec![self.old_root.clone()],
                signer: self.old_signer.clone(),
                directive: None,
            },
        }
    }

    /// Whether the current phase's gate is met by `fleet`, and if not, what it waits for.
    pub fn gate(&self, fleet: &FleetView) -> Result<(), String> {
        let who = |what: &str, done: usize| {
            let names = if fleet.stragglers.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", fleet.stragglers.join(", "))
            };
            format!("{done}/{} sidecars {what}{names}", fleet.connected)
        };
        match self.phase {
            Phase::Prepare | Phase::Finalize => {
                if fleet.bundle_acked < fleet.connected {
                    return Err(who("hold the new bundle", fleet.bundle_acked));
                }
                Ok(())
            }
            Phase::Switch | Phase::RollingBack => {
                if fleet.reissued < fleet.connected {
                    return Err(who("re-issued", fleet.reissued));
                }
                if fleet.live_retiring_certs > 0 {
                    return Err(format!(
                        "{} live certificate(s) of the retiring CA not yet superseded",
                        fleet.live_retiring_certs
                    ));
                }
                Ok(())
            }
            Phase::Done | Phase::RolledBack => Ok(()),
        }
    }

    /// Progress of the current phase.
    pub fn progress(&self, fleet: &FleetView) -> Progress {
        let done = match self.phase {
            Phase::Prepare | Phase::Finalize => fleet.bundle_acked,
            Phase::Switch | Phase::RollingBack => fleet.reissued,
            Phase::Done | Phase::RolledBack => fleet.connected,
        };
        Progress {
            done: done.min(fleet.connected),
            total: fleet.connected,
        }
    }

    /// Automatic mode: moves on when the gate is met (and the rotation is not paused).
    /// Returns whether the phase changed.
    pub fn tick(&mut self, fleet: &FleetView, now: i64) -> bool {
        if self.phase.is_terminal() || self.paused {
            return false;
        }
        match self.gate(fleet) {
            Err(waiting) => {
                self.waiting_for = waiting;
                false
            }
            Ok(()) if self.mode == Mode::Manual => {
                self.waiting_for = format!(
                    "{} is done: waiting for `meshctl ca rotate next`",
                    self.phase.as_str()
                );
                false
            }
            Ok(()) => {
                self.advance(now);
                true
            }
        }
    }

    /// Manual mode's `next` (or a forced step in automatic mode): refused while the gate is
    /// not met, so an operator cannot skip the fleet's confirmation.
    pub fn next(&mut self, fleet: &FleetView, now: i64) -> Result<(), RotationError> {
        if self.phase.is_terminal() {
            return Err(RotationError::Finished(self.phase.as_str()));
        }
        if self.paused {
            return Err(RotationError::Paused);
        }
        self.gate(fleet)
            .map_err(|waiting| RotationError::GateNotMet {
                phase: self.phase.as_str(),
                waiting,
            })?;
        self.advance(now);
        Ok(())
    }

    fn advance(&mut self, now: i64) {
        self.phase = match self.phase {
            Phase::Prepare => Phase::Switch,
            Phase::Switch => Phase::Finalize,
            Phase::Finalize => Phase::Done,
            Phase::RollingBack => Phase::RolledBack,
            p => p,
        };
        self.phase_started_at = now;
        self.reissue_before = if matches!(self.phase, Phase::Switch | Phase::RollingBack) {
            now + self.window_secs as i64
        } else {
            0
        };
        self.waiting_for.clear();
    }

    pub fn pause(&mut self) -> Result<(), RotationError> {
        if self.phase.is_terminal() {
            return Err(RotationError::Finished(self.phase.as_str()));
        }
        self.paused = true;
        Ok(())
    }

    pub fn resume(&mut self) -> Result<(), RotationError> {
        if self.phase.is_terminal() {
            return Err(RotationError::Finished(self.phase.as_str()));
        }
        self.paused = false;
        Ok(())
    }

    /// Rolls back to the old CA; allowed until `Finalize` (the old root is still trusted).
    pub fn rollback(&mut self, now: i64) -> Result<(), RotationError> {
        match self.phase {
            Phase::Prepare => {
                self.phase = Phase::RolledBack;
                self.phase_started_at = now;
                self.reissue_before = 0;
            }
            Phase::Switch => {
                self.phase = Phase::RollingBack;
                self.phase_started_at = now;
                self.reissue_before = now + self.window_secs as i64;
            }
            p @ (Phase::Finalize | Phase::Done) => {
                return Err(RotationError::TooLateToRollBack(p.as_str()));
            }
            p @ (Phase::RollingBack | Phase::RolledBack) => {
                return Err(RotationError::Finished(p.as_str()));
            }
        }
        self.paused = false;
        self.waiting_for.clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(mode: Mode) -> Rotation {
        Rotation::start(
            3,
            mode,
            "old-root",
            "old-signer",
            "new-root",
            "new-signer",
            60,
            1000,
        )
    }

    fn fleet(connected: usize, bundle_acked: usize, reissued: usize, live: u64) -> FleetView {
        FleetView {
            connected,
            bundle_acked,
            reissued,
            live_retiring_certs: live,
            stragglers: vec!["web-1".into()],
        }
    }

    #[test]
    fn automatic_rotation_walks_every_phase_gated_on_the_fleet() {
        let mut r = rotation(Mode::Automatic);
        assert_eq!(r.effects().bundle_roots, vec!["old-root", "new-root"]);
        assert_eq!(r.effects().signer, "old-signer");

        assert!(
            !r.tick(&fleet(4, 3, 0, 0), 1001),
            "one sidecar lacks the new bundle"
        );
        assert_eq!(r.phase, Phase::Prepare);
        assert!(
            r.waiting_for
                .contains("3/4 sidecars hold the new bundle (e.g. web-1)"),
            "{}",
            r.waiting_for
        );
        assert_eq!(
            r.progress(&fleet(4, 3, 0, 0)),
            Progress { done: 3, total: 4 }
        );

        assert!(r.tick(&fleet(4, 4, 0, 0), 1002));
        assert_eq!(r.phase, Phase::Switch);
        let e = r.effects();
        assert_eq!(e.signer, "new-signer");
        assert_eq!(
            e.bundle_roots.len(),
            2,
            "both roots trusted while certificates change"
        );
        assert_eq!(
            e.directive,
            Some((6, 1062)),
            "re-issue within the 60 s window"
        );

        assert!(
            !r.tick(&fleet(4, 4, 4, 2), 1003),
            "old certificates still live"
        );
        assert!(
            r.waiting_for.contains("2 live certificate"),
            "{}",
            r.waiting_for
        );
        assert!(r.tick(&fleet(4, 4, 4, 0), 1004));
        assert_eq!(r.phase, Phase::Finalize);
        assert_eq!(r.effects().bundle_roots, vec!["new-root"]);
        assert_eq!(r.effects().directive, None);

        assert!(r.tick(&fleet(4, 4, 4, 0), 1005));
        assert_eq!(r.phase, Phase::Done);
        assert!(
            !r.tick(&fleet(4, 0, 0, 9), 1006),
            "a finished rotation stays finished"
        );
    }

    #[test]
    fn manual_mode_waits_for_next_and_next_refuses_an_unmet_gate() {
        let mut r = rotation(Mode::Manual);
        assert!(!r.tick(&fleet(2, 2, 0, 0), 1001));
        assert!(r.waiting_for.contains("meshctl ca rotate next"));
        assert_eq!(r.phase, Phase::Prepare);
        assert!(matches!(
            r.next(&fleet(2, 1, 0, 0), 1002),
            Err(RotationError::GateNotMet { .. })
        ));
        r.next(&fleet(2, 2, 0, 0), 1003).unwrap();
        assert_eq!(r.phase, Phase::Switch);
    }

    #[test]
    fn pause_stops_the_machine_and_resume_continues() {
        let mut r = rotation(Mode::Automatic);
        r.pause().unwrap();
        assert!(!r.tick(&fleet(1, 1, 0, 0), 1001));
        assert_eq!(r.next(&fleet(1, 1, 0, 0), 1001), Err(RotationError::Paused));
        r.resume().unwrap();
        assert!(r.tick(&fleet(1, 1, 0, 0), 1002));
    }

    #[test]
    fn rollback_is_allowed_until_finalize() {
        let mut r = rotation(Mode::Automatic);
        r.rollback(1001).unwrap();
        assert_eq!(r.phase, Phase::RolledBack);
        assert_eq!(r.effects().bundle_roots, vec!["old-root"]);

        let mut r = rotation(Mode::Automatic);
        r.tick(&fleet(1, 1, 0, 0), 1001);
        r.rollback(1002).unwrap();
        assert_eq!(r.phase, Phase::RollingBack);
        let e = r.effects();
        assert_eq!(e.signer, "old-signer");
        assert_eq!(
            e.bundle_roots.len(),
            2,
            "new certificates stay trusted while they are replaced"
        );
        assert_eq!(e.directive, Some((7, 1062)), "a new directive generation");
        assert!(r.tick(&fleet(1, 1, 1, 0), 1003));
        assert_eq!(r.phase, Phase::RolledBack);
        assert_eq!(r.effects().bundle_roots, vec!["old-root"]);

        let mut r = rotation(Mode::Automatic);
        r.tick(&fleet(0, 0, 0, 0), 1);
        r.tick(&fleet(0, 0, 0, 0), 2);
        assert_eq!(r.phase, Phase::Finalize);
        assert_eq!(
            r.rollback(3),
            Err(RotationError::TooLateToRollBack("finalize"))
        );
    }

    #[test]
    fn phases_round_trip_through_their_names() {
        for p in [
            Phase::Prepare,
            Phase::Switch,
            Phase::Finalize,
            Phase::Done,
            Phase::RollingBack,
            Phase::RolledBack,
        ] {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
        assert_eq!(Phase::parse("bogus"), None);
    }
}
