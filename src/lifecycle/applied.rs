//! The migration files `pgshift apply` has carried out, in
//! `pgshift.applied_files`: one row per file name, with the checksum of
//! the text applied. A file recorded again with the same checksum is a
//! no-op; with another, a conflict (an applied file was changed).

use super::{ActionError, Lifecycle};
use crate::api::AppliedFile;

impl Lifecycle {
    /// `GET /applied-files`, in the order they were applied.
    pub async fn applied_files(&self) -> Result<Vec<AppliedFile>, ActionError> {
        let client = self.connect().await?;
        let rows = client
            .query(
                "select file, checksum, statements, migrations,
                        to_char(applied_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                   from pgshift.applied_files order by applied_at, file",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| AppliedFile {
                file: r.get(0),
                checksum: r.get(1),
                statements: r.get(2),
                migrations: r.get(3),
                applied_at: r.get(4),
            })
            .collect())
    }

    /// `POST /applied-files`: records `f` (its `applied_at` is now).
    pub async fn record_applied(&self, f: &AppliedFile) -> Result<AppliedFile, ActionError> {
        let valid = |s: &str| !s.is_empty() && s.len() <= 1024 && !s.contains('\0');
        if !valid(&f.file) || !valid(&f.checksum) || f.migrations.iter().any(|m| !valid(m)) {
            return Err(ActionError::BadRequest(
                "an applied file needs a file name and a checksum (at most 1024 bytes each, no NUL)".into(),
            ));
        }
        let client = self.connect().await?;
        let row = client
            .query_one(
                "with added as (
                   insert into pgshift.applied_files (file, checksum, statements, migrations)
                   values ($1, $2, $3, $4) on conflict (file) do nothing returning checksum)
                 select coalesce((select checksum from added),
                                 (select checksum from pgshift.applied_files where file = $1))",
                &[&f.file, &f.checksum, &f.statements, &f.migrations],
            )
            .await?;
        let recorded: String = row.get(0);
        if recorded != f.checksum {
            return Err(ActionError::Conflict(format!(
                "{} was applied with checksum {recorded}; its text has changed since (checksum {}): an applied migration file is not edited, write a new one",
                f.file, f.checksum
            )));
        }
        let files = self.applied_files().await?;
        files
            .into_iter()
            .find(|a| a.file == f.file)
            .ok_or_else(|| ActionError::Failed(format!("{} was not recorded", f.file)))
    }
}
