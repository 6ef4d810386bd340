//! Rows written with plain SQL, as another version or a crash may leave them.
#![allow(dead_code)]

use command_coordinator::CommandId;

use super::TestDb;

pub struct Row<'a> {
    pub id: CommandId,
    pub command_type: i32,
    pub parent: Option<CommandId>,
    pub root: Option<CommandId>,
    pub params: &'a str,
    pub status: Option<&'a str>,
    pub executed: bool,
    pub notified: bool,
    pub return_value: Option<&'a str>,
    pub reason: Option<&'a str>,
}

impl<'a> Row<'a> {
    pub fn new(command_type: i32, params: &'a str, status: &'a str) -> Self {
        let id = CommandId::new();
        Self {
            id,
            command_type,
            parent: None,
            root: Some(id),
            params,
            status: Some(status),
            executed: false,
            notified: false,
            return_value: None,
            reason: None,
        }
    }

    pub fn executed(mut self) -> Self {
        self.executed = true;
        self
    }

    pub fn child_of(mut self, parent: &Row) -> Self {
        self.parent = Some(parent.id);
        self.root = parent.root;
        self
    }
}

pub async fn insert(db: &TestDb, row: &Row<'_>) {
    let client = db.pool.get().await.unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO {} (command_id, command_type, root_command_id, parent_command_id, \
                 command_parameters, command_params_class, created_at, status, callback_enabled, \
                 callback_notified, executed, return_value, return_value_class, failure_reason) \
                 VALUES ($1, $2, $3, $4, $5, 'test', now(), $6, true, $7, $8, $9, 'u64', $10)",
                db.table()
            ),
            &[
                row.id.as_uuid(),
                &row.command_type,
                &row.root.map(uuid::Uuid::from),
                &row.parent.map(uuid::Uuid::from),
                &row.params,
                &row.status,
                &row.notified,
                &row.executed,
                &row.return_value,
                &row.reason,
            ],
        )
        .await
        .unwrap();
}

pub fn job(tag: &str, name: &str, output: u64) -> String {
    format!(
        r#"{{"tag":"{tag}","name":"{name}","behaviour":"Succeed","polls_needed":1,"output":{output},"started_job":"job-of-{name}"}}"#
    )
}
