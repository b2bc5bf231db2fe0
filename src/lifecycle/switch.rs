//! `switch-reads`: which column answers reads (`new` once validated, or
//! back to `old`), as a new rules epoch every proxy acknowledges.

use super::store::Record;
use super::{ActionError, Lifecycle};
use crate::api::ReadSource;
use crate::rewrite::migration::Phase;

impl Lifecycle {
    pub(super) async fn switch_reads(
        &self,
        mut record: Record,
        to: ReadSource,
    ) -> Result<(), ActionError> {
        let client = self.connect().await?;
        match to {
            ReadSource::New => {
                if record.phase == Phase::Switched {
                    return Ok(());
                }
                if record.phase != Phase::Validated {
                    return Err(Self::illegal(
                        &record,
                        "switch-reads to new",
                        "phase validated",
                    ));
                }
                match &record.validation {
                    Some(v) if v.mismatches > 0 => {
                        return Err(ActionError::Conflict(format!("the last validation found {} mismatches (e.g. keys {:?}); validate again (with {{\"fix\": true}} to fix them)", v.mismatches, v.samples)))
                    }
                    Some(v) if v.at_ms < record.write_path_changed_ms => {
                        return Err(ActionError::Conflict("the last validation is older than the last change of the write path; validate again".into()))
                    }
                    None => return Err(ActionError::Conflict("no validation yet; run validate".into())),
                    Some(_) => {}
                }
                record.phase = Phase::Switched;
            }
            ReadSource::Old => {
                if record.phase == Phase::Validated {
                    return Ok(());
                }
                if record.phase != Phase::Switched {
                    return Err(Self::illegal(
                        &record,
                        "switch-reads to old",
                        "phase switched",
                    ));
                }
                record.phase = Phase::Validated;
            }
        }
        let detail = match to {
            ReadSource::New => "new",
            ReadSource::Old => "old",
        };
        self.commit(&client, record, "switch-reads", detail, true)
            .await?;
        Ok(())
    }
}
