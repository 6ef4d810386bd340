//! The `command_entities` store against a real PostgreSQL: every operation.

mod support;

use chrono::{Duration, Utc};
use command_coordinator::{
    CommandEntity, CommandId, CommandStatus, CommandStore, JsonPayload, StoreErrorKind, StoreOp,
};
use serde::{Deserialize, Serialize};
use support::fresh_db;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RemoveSnapshot {
    vm: String,
    snapshot: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct MergeOutput {
    merged_bytes: u64,
}

fn command(command_type: i32) -> CommandEntity {
    let params = JsonPayload::encode(&RemoveSnapshot {
        vm: "vm-1".into(),
        snapshot: 7,
    })
    .unwrap();
    CommandEntity::new(CommandId::new(), command_type, params)
}

fn child_of(parent: &CommandEntity) -> CommandEntity {
    command(2).with_parent(parent)
}

#[actix::test]
async fn a_saved_command_reads_back_with_every_field() {
    let db = fresh_db().await;
    let root = command(1);
    let mut child = child_of(&root);
    child.job_id = Some(uuid::Uuid::new_v4());
    child.step_id = Some(uuid::Uuid::new_v4());
    child.return_value = Some(JsonPayload::encode(&MergeOutput { merged_bytes: 42 }).unwrap());
    child.failure_reason = Some("disk busy".into());
    db.store.save_or_update(&root).await.unwrap();
    db.store.save_or_update(&child).await.unwrap();

    let read = db.store.get(child.id).await.unwrap().expect("row exists");
    assert_eq!(read.id, child.id);
    assert_eq!(read.command_type, 2);
    assert_eq!(read.root_id, Some(root.id));
    assert_eq!(read.parent_id, Some(root.id));
    assert_eq!(read.parameters, child.parameters);
    assert!(read.parameters.class().ends_with("RemoveSnapshot"));
    assert_eq!(
        read.parameters.decode::<RemoveSnapshot>().unwrap(),
        RemoveSnapshot {
            vm: "vm-1".into(),
            snapshot: 7
        }
    );
    assert_eq!(read.status, CommandStatus::NotStarted);
    assert!(read.callback_enabled && !read.callback_notified && !read.executed);
    assert_eq!(
        read.return_value.unwrap().decode::<MergeOutput>().unwrap(),
        MergeOutput { merged_bytes: 42 }
    );
    assert_eq!(read.failure_reason.as_deref(), Some("disk busy"));
    assert_eq!((read.job_id, read.step_id), (child.job_id, child.step_id));
    assert_eq!(read.ended_at, None);
    // PostgreSQL keeps microseconds.
    assert!(
        (read.created_at - child.created_at)
            .num_microseconds()
            .unwrap()
            .abs()
            <= 1
    );
}

#[actix::test]
async fn upsert_twice_keeps_one_row_and_the_first_created_at() {
    let db = fresh_db().await;
    let mut entity = command(1);
    db.store.save_or_update(&entity).await.unwrap();
    let first = db.store.get(entity.id).await.unwrap().unwrap();

    entity.created_at = Utc::now() + Duration::days(3);
    entity.status = CommandStatus::Active;
    entity.executed = true;
    db.store.save_or_update(&entity).await.unwrap();

    let second = db.store.get(entity.id).await.unwrap().unwrap();
    assert_eq!(second.created_at, first.created_at);
    assert_eq!(second.status, CommandStatus::Active);
    assert!(second.executed);
    assert!(second.updated_at >= first.updated_at);
    let client = db.pool.get().await.unwrap();
    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {}", db.table()), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
}

#[actix::test]
async fn every_status_round_trips_and_ended_ones_get_an_end_time() {
    let db = fresh_db().await;
    let entity = command(1);
    db.store.save_or_update(&entity).await.unwrap();
    for status in CommandStatus::ALL {
        assert!(db.store.update_status(entity.id, status).await.unwrap());
        assert_eq!(db.store.get_status(entity.id).await.unwrap(), Some(status));
        let read = db.store.get(entity.id).await.unwrap().unwrap();
        assert_eq!(read.status, status);
        assert_eq!(read.ended_at.is_some(), status.is_ended(), "{status}");
    }
    // Saved whole, too.
    for status in CommandStatus::ALL {
        let mut e = command(1);
        e.status = status;
        db.store.save_or_update(&e).await.unwrap();
        let read = db.store.get(e.id).await.unwrap().unwrap();
        assert_eq!(read.status, status);
        assert_eq!(read.ended_at.is_some(), status.is_ended(), "{status}");
    }
}

#[actix::test]
async fn a_missing_command_is_none_or_false_never_an_error() {
    let db = fresh_db().await;
    let id = CommandId::new();
    assert_eq!(db.store.get(id).await.unwrap(), None);
    assert_eq!(db.store.get_status(id).await.unwrap(), None);
    assert!(db.store.child_ids(id).await.unwrap().is_empty());
    assert!(db.store.hierarchy(id).await.unwrap().entities.is_empty());
    assert!(!db.store.has_commands_with_root(id).await.unwrap());
    assert!(
        !db.store
            .update_status(id, CommandStatus::Active)
            .await
            .unwrap()
    );
    assert!(!db.store.update_executed(id).await.unwrap());
    assert!(!db.store.update_notified(id).await.unwrap());
    assert!(!db.store.update_return_value(id, None).await.unwrap());
    assert!(!db.store.remove(id).await.unwrap());
    assert_eq!(db.store.remove_hierarchy(id).await.unwrap(), 0);
}

#[actix::test]
async fn flags_and_return_value_update_one_column_each() {
    let db = fresh_db().await;
    let e = command(1);
    db.store.save_or_update(&e).await.unwrap();

    assert!(db.store.update_executed(e.id).await.unwrap());
    let read = db.store.get(e.id).await.unwrap().unwrap();
    assert!(read.executed && !read.callback_notified);

    let value = JsonPayload::encode(&MergeOutput { merged_bytes: 9 }).unwrap();
    assert!(
        db.store
            .update_return_value(e.id, Some(&value))
            .await
            .unwrap()
    );
    let read = db.store.get(e.id).await.unwrap().unwrap();
    assert_eq!(read.return_value.as_ref(), Some(&value));

    assert!(db.store.update_notified(e.id).await.unwrap());
    let read = db.store.get(e.id).await.unwrap().unwrap();
    assert!(read.callback_notified && read.executed);
    assert_eq!(read.status, CommandStatus::NotStarted);

    assert!(db.store.update_return_value(e.id, None).await.unwrap());
    assert_eq!(
        db.store.get(e.id).await.unwrap().unwrap().return_value,
        None
    );
}

#[actix::test]
async fn children_hierarchy_and_root_lookups() {
    let db = fresh_db().await;
    let root = command(1);
    let a = child_of(&root);
    let b = child_of(&root);
    let a1 = child_of(&a);
    let other = command(1);
    for e in [&root, &a, &b, &a1, &other] {
        db.store.save_or_update(e).await.unwrap();
    }
    let children = db.store.child_ids(root.id).await.unwrap();
    assert_eq!(children.len(), 2);
    assert!(children.contains(&a.id) && children.contains(&b.id));
    assert_eq!(db.store.child_ids(a.id).await.unwrap(), vec![a1.id]);

    let tree = db.store.hierarchy(root.id).await.unwrap();
    assert!(tree.bad_rows.is_empty());
    let mut ids: Vec<_> = tree.entities.iter().map(|e| e.id).collect();
    ids.sort();
    let mut expected = vec![root.id, a.id, b.id, a1.id];
    expected.sort();
    assert_eq!(ids, expected);

    assert!(db.store.has_commands_with_root(root.id).await.unwrap());
    assert!(db.store.has_commands_with_root(other.id).await.unwrap());
    assert!(!db.store.has_commands_with_root(a.id).await.unwrap());
}

#[actix::test]
async fn callback_enabled_lists_only_managed_unnotified_commands() {
    let db = fresh_db().await;
    let pending = command(1);
    let mut notified = command(1);
    notified.callback_notified = true;
    let mut unmanaged = command(1);
    unmanaged.callback_enabled = false;
    for e in [&pending, &notified, &unmanaged] {
        db.store.save_or_update(e).await.unwrap();
    }
    let loaded = db.store.commands_with_callback_enabled().await.unwrap();
    assert_eq!(
        loaded.entities.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![pending.id]
    );
    assert!(loaded.bad_rows.is_empty());
}

#[actix::test]
async fn remove_and_remove_hierarchy_take_exactly_their_rows() {
    let db = fresh_db().await;
    // A three-level tree, and a second tree that must survive.
    let root = command(1);
    let a = child_of(&root);
    let b = child_of(&root);
    let a1 = child_of(&a);
    let a2 = child_of(&a);
    let b1 = child_of(&b);
    let keep_root = command(1);
    let keep_child = child_of(&keep_root);
    for e in [&root, &a, &b, &a1, &a2, &b1, &keep_root, &keep_child] {
        db.store.save_or_update(e).await.unwrap();
    }
    assert_eq!(db.store.remove_hierarchy(root.id).await.unwrap(), 6);
    for gone in [&root, &a, &b, &a1, &a2, &b1] {
        assert_eq!(db.store.get(gone.id).await.unwrap(), None);
    }
    assert!(db.store.get(keep_root.id).await.unwrap().is_some());
    assert!(db.store.get(keep_child.id).await.unwrap().is_some());

    // A subtree by its own top (its rows carry another root id).
    assert!(db.store.remove(keep_child.id).await.unwrap());
    assert_eq!(db.store.child_ids(keep_root.id).await.unwrap(), vec![]);
}

async fn age_hierarchy(db: &support::TestDb, root: CommandId, days: i64) {
    db.sql(&format!(
        "UPDATE {t} SET ended_at = ended_at - interval '{days} days', \
         updated_at = updated_at - interval '{days} days' \
         WHERE root_command_id = '{root}' OR command_id = '{root}'",
        t = db.table()
    ))
    .await;
}

#[actix::test]
async fn remove_before_takes_only_old_hierarchies_that_ended_entirely() {
    let db = fresh_db().await;
    let cutoff = Utc::now() - Duration::days(30);

    // Old and finished: goes.
    let mut old_done = command(1);
    old_done.status = CommandStatus::EndedSuccessfully;
    let mut old_done_child = child_of(&old_done);
    old_done_child.status = CommandStatus::EndedWithFailure;
    // Old but a child is still running: stays, however old.
    let mut old_running = command(1);
    old_running.status = CommandStatus::EndedWithFailure;
    let mut running_child = child_of(&old_running);
    running_child.status = CommandStatus::Active;
    // Finished recently: stays.
    let mut recent_done = command(1);
    recent_done.status = CommandStatus::EndedSuccessfully;
    // Old, not ended (SUCCEEDED: its end method has not run): stays.
    let mut old_succeeded = command(1);
    old_succeeded.status = CommandStatus::Succeeded;
    for e in [
        &old_done,
        &old_done_child,
        &old_running,
        &running_child,
        &recent_done,
        &old_succeeded,
    ] {
        db.store.save_or_update(e).await.unwrap();
    }
    for root in [old_done.id, old_running.id, old_succeeded.id] {
        age_hierarchy(&db, root, 40).await;
    }

    let batch = db.store.remove_before_batch(cutoff, 100).await.unwrap();
    assert_eq!(batch.roots, 1);
    let mut removed = batch.removed.clone();
    removed.sort();
    let mut expected = vec![old_done.id, old_done_child.id];
    expected.sort();
    assert_eq!(removed, expected);
    for kept in [&old_running, &running_child, &recent_done, &old_succeeded] {
        assert!(db.store.get(kept.id).await.unwrap().is_some());
    }

    // Nothing more to take.
    assert_eq!(db.store.remove_before(cutoff).await.unwrap(), 0);
}

#[actix::test]
async fn remove_before_works_in_bounded_batches() {
    let db = fresh_db().await;
    let mut roots = Vec::new();
    for _ in 0..25 {
        let mut root = command(1);
        root.status = CommandStatus::EndedSuccessfully;
        let mut child = child_of(&root);
        child.status = CommandStatus::EndedSuccessfully;
        db.store.save_or_update(&root).await.unwrap();
        db.store.save_or_update(&child).await.unwrap();
        roots.push(root.id);
    }
    db.sql(&format!(
        "UPDATE {} SET ended_at = now() - interval '2 days'",
        db.table()
    ))
    .await;
    let cutoff = Utc::now() - Duration::days(1);
    let first = db.store.remove_before_batch(cutoff, 10).await.unwrap();
    assert_eq!((first.roots, first.removed.len()), (10, 20));
    // The rest in one call that loops over batches.
    assert_eq!(db.store.remove_before(cutoff).await.unwrap(), 30);
    for root in roots {
        assert!(!db.store.has_commands_with_root(root).await.unwrap());
    }
}

#[actix::test]
async fn bad_rows_are_reported_by_id_while_good_rows_still_load() {
    let db = fresh_db().await;
    let good = command(1);
    let good2 = command(2);
    db.store.save_or_update(&good).await.unwrap();
    db.store.save_or_update(&good2).await.unwrap();

    let unknown_status = CommandId::new();
    let null_status = CommandId::new();
    let corrupt_params = CommandId::new();
    let null_params = CommandId::new();
    let corrupt_return = CommandId::new();
    let null_created = CommandId::new();
    let t = db.table();
    db.sql(&format!(
        "INSERT INTO {t} (command_id, command_type, command_parameters, command_params_class, \
            created_at, status, callback_enabled, return_value) VALUES \
         ('{unknown_status}', 1, '{{}}', 'X', now(), 'FAILED_RESTARTED', true, NULL), \
         ('{null_status}', 1, '{{}}', 'X', now(), NULL, true, NULL), \
         ('{corrupt_params}', 1, '{{\"vm\": ', 'X', now(), 'ACTIVE', true, NULL), \
         ('{null_params}', 1, NULL, NULL, now(), 'ACTIVE', true, NULL), \
         ('{corrupt_return}', 1, '{{}}', 'X', now(), 'SUCCEEDED', true, 'not json'), \
         ('{null_created}', 1, '{{}}', 'X', NULL, 'ACTIVE', true, NULL)"
    ))
    .await;

    let loaded = db.store.commands_with_callback_enabled().await.unwrap();
    let mut good_ids: Vec<_> = loaded.entities.iter().map(|e| e.id).collect();
    good_ids.sort();
    let mut expected = vec![good.id, good2.id];
    expected.sort();
    assert_eq!(good_ids, expected);

    let reason_of = |id: CommandId| {
        loaded
            .bad_rows
            .iter()
            .find(|b| b.command_id == id)
            .unwrap_or_else(|| panic!("{id} not reported: {:?}", loaded.bad_rows))
            .reason
            .clone()
    };
    assert_eq!(loaded.bad_rows.len(), 6);
    assert!(reason_of(unknown_status).contains("FAILED_RESTARTED"));
    assert!(reason_of(null_status).contains("status is NULL"));
    assert!(reason_of(corrupt_params).contains("command_parameters is not JSON"));
    assert!(reason_of(null_params).contains("command_parameters is NULL"));
    assert!(reason_of(corrupt_return).contains("return_value is not JSON"));
    assert!(reason_of(null_created).contains("created_at is NULL"));

    // Reading one bad row by id is an error that names the operation and the id.
    let err = db.store.get(corrupt_params).await.unwrap_err();
    assert_eq!(err.op, StoreOp::Get);
    assert_eq!(err.command_id, Some(corrupt_params));
    assert!(matches!(err.kind, StoreErrorKind::BadRow(_)));
    assert!(
        err.to_string().contains(&corrupt_params.to_string()),
        "{err}"
    );
    let err = db.store.get_status(unknown_status).await.unwrap_err();
    assert_eq!(
        (err.op, err.command_id),
        (StoreOp::GetStatus, Some(unknown_status))
    );
    // The good ones still read on their own.
    assert!(db.store.get(good.id).await.unwrap().is_some());
}

#[actix::test]
async fn ten_thousand_rows_insert_and_list() {
    let db = fresh_db().await;
    let root = command(1);
    db.store.save_or_update(&root).await.unwrap();
    let mut ids = vec![root.id];
    for _ in 1..10_000 {
        let child = child_of(&root);
        db.store.save_or_update(&child).await.unwrap();
        ids.push(child.id);
    }
    let loaded = db.store.commands_with_callback_enabled().await.unwrap();
    assert!(loaded.bad_rows.is_empty());
    assert_eq!(loaded.entities.len(), 10_000);
    let tree = db.store.hierarchy(root.id).await.unwrap();
    let mut listed: Vec<_> = tree.entities.iter().map(|e| e.id).collect();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);
    assert_eq!(db.store.child_ids(root.id).await.unwrap().len(), 9_999);
}

#[actix::test]
async fn an_unreachable_database_is_a_transient_error_naming_the_operation() {
    // Port 1 on loopback: nothing listens there.
    let config =
        command_coordinator::DatabaseConfig::from_url("postgres://nobody:pw@127.0.0.1:1/x")
            .unwrap();
    let store =
        command_coordinator::PgStore::new(config.create_pool().unwrap(), config.schema().clone());
    let id = CommandId::new();
    let err = store.get(id).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!((err.op, err.command_id), (StoreOp::Get, Some(id)));
    assert!(!format!("{err:?}").contains("pw@"));
}

#[actix::test]
async fn cancellation_marks_a_command_and_its_unended_descendants() {
    let db = fresh_db().await;
    let root = command(1);
    let child = child_of(&root);
    let mut ended_child = child_of(&root);
    ended_child.status = CommandStatus::EndedSuccessfully;
    let grandchild = child_of(&child);
    let other = command(1);
    for e in [&root, &child, &ended_child, &grandchild, &other] {
        db.store.save_or_update(e).await.unwrap();
    }
    assert_eq!(db.store.cancel_requested().await.unwrap(), vec![]);
    assert_eq!(
        db.store.request_cancel(root.id).await.unwrap(),
        command_coordinator::CancelOutcome::Requested { commands: 3 }
    );
    let mut requested = db.store.cancel_requested().await.unwrap();
    requested.sort();
    let mut expected = vec![root.id, child.id, grandchild.id];
    expected.sort();
    assert_eq!(requested, expected);
    assert_eq!(
        db.store.request_cancel(ended_child.id).await.unwrap(),
        command_coordinator::CancelOutcome::AlreadyEnded(CommandStatus::EndedSuccessfully)
    );
    assert_eq!(
        db.store.request_cancel(CommandId::new()).await.unwrap(),
        command_coordinator::CancelOutcome::NotFound
    );
    // Once ended, a command no longer counts as requested.
    db.store
        .update_status(grandchild.id, CommandStatus::EndedWithFailure)
        .await
        .unwrap();
    assert_eq!(db.store.cancel_requested().await.unwrap().len(), 2);
}

#[actix::test]
async fn expired_counts_what_cleanup_would_remove_without_removing_it() {
    let db = fresh_db().await;
    let mut root = command(1);
    root.status = CommandStatus::EndedSuccessfully;
    let mut child = child_of(&root);
    child.status = CommandStatus::EndedSuccessfully;
    let mut running_root = command(1);
    running_root.status = CommandStatus::EndedSuccessfully;
    let running_child = child_of(&running_root);
    for e in [&root, &child, &running_root, &running_child] {
        db.store.save_or_update(e).await.unwrap();
    }
    db.sql(&format!("UPDATE {} SET ended_at = now() - interval '2 days', updated_at = now() - interval '2 days'", db.table())).await;
    let cutoff = Utc::now() - Duration::days(1);
    let expired = db.store.expired(cutoff).await.unwrap();
    assert_eq!((expired.hierarchies, expired.rows), (1, 2));
    assert!(
        db.store.get(root.id).await.unwrap().is_some(),
        "nothing removed"
    );
    assert_eq!(db.store.remove_before(cutoff).await.unwrap(), expired.rows);
}

/// A writer batch is fenced by ownership and finds each row by (hierarchy,
/// id): an update applies only to a row this host owns, in the hierarchy it
/// names; any other is answered as refused, never silently skipped.
#[actix::test]
async fn writer_batches_apply_only_to_owned_rows_of_the_named_hierarchy() {
    use command_coordinator::actors::{CommandUpdate, Transition};
    let db = fresh_db().await;
    let me = support::join_host(&db).await;
    let other = support::join_host(&db).await;
    let root = command(1);
    let child = child_of(&root);
    let theirs = command(1);
    let insert = |e: &CommandEntity| Transition::Insert(Box::new(e.clone()));
    let applied = db
        .store
        .apply(me, &[insert(&root), insert(&child)])
        .await
        .unwrap();
    assert!(applied.fenced.is_empty(), "{applied:?}");
    db.store.apply(other, &[insert(&theirs)]).await.unwrap();
    assert_eq!(
        db.store.get(child.id).await.unwrap().unwrap().owner,
        Some(me)
    );

    let active = |id: CommandId, root: Option<CommandId>| {
        let mut u = CommandUpdate::new(id);
        u.status = Some(CommandStatus::Active);
        u.root = root;
        Transition::Update(u)
    };
    let applied = db
        .store
        .apply(
            me,
            &[
                // Its own row, in its hierarchy: applied.
                active(child.id, Some(root.id)),
                // Its own row, named in another hierarchy: refused.
                active(root.id, Some(theirs.id)),
                // Another host's row: refused.
                active(theirs.id, Some(theirs.id)),
            ],
        )
        .await
        .unwrap();
    let mut fenced = applied.fenced.clone();
    fenced.sort();
    let mut expected = vec![root.id, theirs.id];
    expected.sort();
    assert_eq!(fenced, expected);
    let status = |id| {
        let store = db.store.clone();
        async move { store.get(id).await.unwrap().unwrap().status }
    };
    assert_eq!(status(child.id).await, CommandStatus::Active);
    assert_eq!(status(root.id).await, CommandStatus::NotStarted);
    assert_eq!(status(theirs.id).await, CommandStatus::NotStarted);

    // A host that is not alive inserts nothing.
    db.sql(&format!(
        "UPDATE {}.command_hosts SET state = 'dead' WHERE host_id = '{}'",
        db.config.schema().quoted(),
        other
    ))
    .await;
    let late = command(1);
    let applied = db.store.apply(other, &[insert(&late)]).await.unwrap();
    assert_eq!(applied.fenced, vec![late.id]);
    assert!(db.store.get(late.id).await.unwrap().is_none());
}
