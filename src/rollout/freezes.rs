//! Freezes: deployments of one service or all refused until lifted, with who and why.

use super::deploy::*;
use crate::events::{EventKind, NewEvent};
use crate::rollout::{Applied, ControlError, Controller};
use crate::time::now_ms;
use serde_json::json;
use std::sync::Arc;

impl Controller {
    /// Freezes (or unfreezes) deployments of one service or all.
    pub(super) fn set_freeze(
        &mut self,
        service: Option<String>,
        freeze: Option<String>,
        actor: &str,
    ) -> Result<Applied, ControlError> {
        if let Some(name) = &service {
            if self.table.load().service(name).is_none() {
                return Err(ControlError::NotFound(name.clone()));
            }
        }
        let what = service.clone().unwrap_or_else(|| "every service".into());
        let message = match (&service, freeze) {
            (Some(name), Some(reason)) => {
                self.deployments.frozen.insert(
                    name.clone(),
                    Freeze {
                        reason: reason.clone(),
                        by: actor.to_string(),
                        at_ms: now_ms(),
                    },
                );
                format!("deployments of {what} frozen: {reason}")
            }
            (None, Some(reason)) => {
                self.deployments.frozen_all = Some(Freeze {
                    reason: reason.clone(),
                    by: actor.to_string(),
                    at_ms: now_ms(),
                });
                format!("deployments of {what} frozen: {reason}")
            }
            (Some(name), None) => {
                self.deployments.frozen.remove(name);
                format!("deployments of {what} unfrozen")
            }
            (None, None) => {
                self.deployments.frozen_all = None;
                self.deployments.frozen.clear();
                format!("deployments of {what} unfrozen")
            }
        };
        self.freezes.store(Arc::new(Freezes {
            all: self.deployments.frozen_all.clone(),
            services: self
                .deployments
                .frozen
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }));
        let event = self.bus.publish(NewEvent::new(EventKind::FreezeChanged, actor.to_string(), message).maybe_service(service).evidence(json!({ "all": self.deployments.frozen_all, "services": self.deployments.frozen })));
        Ok(Applied {
            table_version: self.table.load().version,
            event,
            reload: None,
        })
    }
}
