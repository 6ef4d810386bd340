//! `Coordinator::list`: filters and keyset pages over the rows, against a
//! real PostgreSQL.

mod support;

use std::collections::HashSet;

use chrono::{Duration, Utc};
use command_coordinator::{
    CommandEntity, CommandId, CommandStatus, CommandStore, CoordinatorError, JsonPayload,
    ListFilter,
};
use support::{builder, fresh_db};

fn row(command_type: i32, status: CommandStatus, age_s: i64) -> CommandEntity {
    let mut e = CommandEntity::new(
        CommandId::new(),
        command_type,
        JsonPayload::encode(&age_s).unwrap(),
    );
    e.status = status;
    e.created_at = Utc::now() - Duration::seconds(age_s);
    if status.is_ended() {
        e.callback_notified = true;
        e.ended_at = Some(e.created_at);
    }
    e
}

#[actix::test]
async fn pages_visit_every_matching_row_once_newest_first() {
    let db = fresh_db().await;
    let mut ended = Vec::new();
    for i in 0..45 {
        let e = row(7, CommandStatus::EndedSuccessfully, 100 + i);
        db.store.save_or_update(&e).await.unwrap();
        ended.push(e.id);
    }
    // Same created_at for two rows: the id breaks the tie.
    let mut twin = row(7, CommandStatus::EndedSuccessfully, 50);
    db.store.save_or_update(&twin).await.unwrap();
    let created = twin.created_at;
    twin = row(7, CommandStatus::EndedSuccessfully, 50);
    twin.created_at = created;
    db.store.save_or_update(&twin).await.unwrap();
    // Rows the filter leaves out.
    let other_type = row(8, CommandStatus::EndedSuccessfully, 10);
    db.store.save_or_update(&other_type).await.unwrap();
    let failed = row(7, CommandStatus::EndedWithFailure, 10);
    db.store.save_or_update(&failed).await.unwrap();
    let co = builder(&db).start().await.unwrap();

    let mut filter = ListFilter {
        statuses: vec![CommandStatus::EndedSuccessfully],
        command_type: Some(7),
        limit: 10,
        ..ListFilter::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = co.list(&filter).await.unwrap();
        pages += 1;
        assert!(page.rows.len() <= 10);
        seen.extend(page.rows.iter().map(|r| (r.created_at, r.id)));
        match page.next {
            Some(next) => filter.after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 47, "every matching row");
    assert_eq!(pages, 5);
    let unique: HashSet<_> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(unique.len(), 47, "no row twice");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first, ties broken by id"
    );
    assert!(!unique.contains(&other_type.id) && !unique.contains(&failed.id));
    for id in &ended {
        assert!(unique.contains(id));
    }

    // A window of time and one hierarchy.
    let recent = co
        .list(&ListFilter {
            created_after: Some(Utc::now() - Duration::seconds(60)),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    let ids: HashSet<_> = recent.rows.iter().map(|r| r.id).collect();
    assert!(ids.contains(&other_type.id) && ids.contains(&failed.id) && ids.contains(&twin.id));
    assert!(!ids.contains(&ended[0]));
    let one = co
        .list(&ListFilter {
            root: Some(failed.id),
            ..ListFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(one.rows.len(), 1);
    assert_eq!(one.next, None);

    // A filter that cannot be used is refused, in words.
    let err = co
        .list(&ListFilter {
            limit: 0,
            ..ListFilter::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CoordinatorError::InvalidFilter(_)), "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    co.shutdown().await;
}
