//! Unit tests for status records: lifecycle, listing, dead holders.

use super::*;

fn own_record() -> StatusRecord {
    let mut record = StatusRecord::new(
        std::process::id(),
        5678,
        DebugMode::Connect,
        "10.1.2.3:5678",
    );
    record.rank = Some(3);
    record.local_rank = Some(1);
    record
}

/// A record naming this process but with a start time it never had: a "reused PID".
fn stale_record() -> StatusRecord {
    let mut record = own_record();
    let real = holder::process_start_time(record.pid).expect("/proc/self/stat is readable");
    record.start_time = Some(real + 1);
    record
}

#[test]
fn create_writes_a_complete_record_and_drop_removes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = StatusFile::create(dir.path(), own_record()).expect("create");
    let path = file.path().to_path_buf();
    assert!(path.starts_with(dir.path().join(SESSIONS_DIR)), "{path:?}");
    let on_disk = read_record(&path).expect("readable");
    assert_eq!(&on_disk, file.record());
    assert_eq!(
        on_disk.start_time,
        holder::process_start_time(std::process::id())
    );
    assert_eq!(on_disk.pid_ns, holder::pid_namespace());
    assert_eq!(on_disk.state, SessionState::WaitingForDebugger);
    drop(file);
    assert!(!path.exists(), "drop must remove {path:?}");
}

#[test]
fn set_state_moves_since_only_on_a_change_and_keeps_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut record = own_record();
    record.since = 1;
    let mut file = StatusFile::create(dir.path(), record).expect("create");
    file.set_state(SessionState::WaitingForDebugger, Some("relay says 404"))
        .expect("same state");
    assert_eq!(file.record().since, 1, "same state keeps since");
    assert_eq!(file.record().reason.as_deref(), Some("relay says 404"));
    file.set_state(SessionState::RelayUnreachable, Some("dns: no such host"))
        .expect("new state");
    assert!(file.record().since > 1, "a state change moves since");
    let on_disk = read_record(file.path()).expect("readable");
    assert_eq!(on_disk.state, SessionState::RelayUnreachable);
    assert_eq!(on_disk.reason.as_deref(), Some("dns: no such host"));
    file.set_endpoint("relay hc1/5678").expect("endpoint");
    assert_eq!(
        read_record(file.path()).expect("readable").endpoint,
        "relay hc1/5678"
    );
    let leftovers: Vec<_> = fs::read_dir(dir.path().join(SESSIONS_DIR))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn listing_judges_holders_and_reports_unreadable_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    assert_eq!(
        list_sessions(dir.path()).expect("no sessions dir yet"),
        Listing::default()
    );
    let live = StatusFile::create(dir.path(), own_record()).expect("create");
    let sessions = dir.path().join(SESSIONS_DIR);
    let mut stale = stale_record();
    stale.pid_ns = live.record().pid_ns;
    stale.state = SessionState::Attached;
    stale.rank = Some(0);
    let stale_path = sessions.join("stale.json");
    write_atomic(&stale_path, &stale).expect("write stale");
    fs::write(sessions.join("garbage.json"), "{not json").expect("garbage");
    fs::write(sessions.join(".half.json.amlx-tmp.1"), "{").expect("temp file");
    fs::write(sessions.join("notes.txt"), "ignored").expect("other file");

    let Listing {
        sessions: entries,
        unreadable,
    } = list_sessions(dir.path()).expect("list");
    assert_eq!(entries.len(), 2, "{entries:?}");
    // Sorted by rank: the stale rank 0 first, the live rank 3 second.
    assert_eq!(entries[0].holder, Holder::Dead);
    assert_eq!(entries[0].state(), SessionState::Ended);
    let reason = entries[0].reason().expect("a dead holder has a reason");
    assert!(reason.contains("last recorded state: attached"), "{reason}");
    assert_eq!(entries[1].holder, Holder::Live);
    assert_eq!(entries[1].state(), SessionState::WaitingForDebugger);
    assert_eq!(&entries[1].record, live.record());
    assert_eq!(unreadable.len(), 1, "{unreadable:?}");
    assert!(unreadable[0].path.ends_with("garbage.json"));
}

/// A record another user wrote for a live process that is not theirs (here: PID 1, in a
/// file of a user PID 1 does not run as) is not shown as that process's session: in a
/// sessions directory every user may write to, it showed an endpoint of the writer's
/// choosing for someone else's live step. Root's records and dead holders' are judged as
/// before.
#[test]
fn a_record_another_user_wrote_for_a_live_process_is_not_its_session() {
    let mut forged = StatusRecord::new(1, 5678, DebugMode::Direct, "6.6.6.6:5678");
    forged.start_time = holder::process_start_time(1);
    let init = process_uids(1).expect("/proc/1/status is readable");
    let stranger = if init.contains(&65534) { 65533 } else { 65534 };
    let why = foreign_record(&forged, stranger, Holder::Live).expect("not its record");
    assert!(
        why.contains(&format!(
            "written by uid {stranger}, but process 1 runs as uid {}",
            init[0]
        )),
        "{why}"
    );
    assert_eq!(foreign_record(&forged, init[0], Holder::Live), None);
    assert_eq!(
        foreign_record(&forged, 0, Holder::Live),
        None,
        "root's records count"
    );
    assert_eq!(foreign_record(&forged, stranger, Holder::Dead), None);
    // And the listing leaves it out, where this process may give a file away.
    if nix::unistd::geteuid().is_root() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sessions = dir.path().join(SESSIONS_DIR);
        fs::create_dir(&sessions).expect("mkdir");
        forged.pid_ns = holder::pid_namespace();
        let path = sessions.join("1-forged.json");
        write_atomic(&path, &forged).expect("write");
        if std::os::unix::fs::chown(&path, Some(stranger), Some(stranger)).is_ok() {
            let listing = list_sessions(dir.path()).expect("list");
            assert!(listing.sessions.is_empty(), "{:?}", listing.sessions);
            assert_eq!(listing.unreadable.len(), 1, "{listing:?}");
        }
    }
}

#[test]
fn create_prunes_records_of_dead_holders() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sessions = dir.path().join(SESSIONS_DIR);
    fs::create_dir_all(&sessions).expect("dir");
    let mut stale = stale_record();
    stale.pid_ns = holder::pid_namespace();
    let stale_path = sessions.join("99999999.json");
    write_atomic(&stale_path, &stale).expect("write");
    let _live = StatusFile::create(dir.path(), own_record()).expect("create");
    assert!(!stale_path.exists(), "a dead holder's record is pruned");
}

#[test]
fn records_from_another_pid_namespace_are_not_judged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut foreign = stale_record();
    foreign.pid_ns = Some(holder::pid_namespace().unwrap_or(0).wrapping_add(1));
    let file = StatusFile::create(dir.path(), foreign).expect("create");
    let entries = list_sessions(dir.path()).expect("list").sessions;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].holder, Holder::Unknown);
    assert_eq!(entries[0].state(), file.record().state);
}

/// `status` reads every candidate: records of several directories merge in rank order; a
/// missing candidate is nothing, an explicit directory is the only one read.
#[test]
fn records_of_every_directory_are_listed_together() {
    let root = tempfile::tempdir().expect("temp dir");
    let (first, second) = (root.path().join("a"), root.path().join("b"));
    let mut low = own_record();
    low.rank = Some(0);
    let mut high = own_record();
    high.rank = Some(7);
    high.pid_ns = Some(1);
    let _high = StatusFile::create(&first, high).expect("create");
    let _low = StatusFile::create(&second, low).expect("create");
    let dirs = [first.clone(), second, root.path().join("missing")];
    let listing = list_sessions_in(&dirs);
    let ranks: Vec<_> = listing.sessions.iter().map(|e| e.record.rank).collect();
    assert_eq!(ranks, [Some(0), Some(7)]);
    let only = list_sessions_in(std::slice::from_ref(&first));
    assert_eq!(only.sessions.len(), 1);
    let unreadable = root.path().join("a-file");
    fs::write(&unreadable, "").expect("write");
    assert_eq!(
        list_sessions_in(std::slice::from_ref(&unreadable)),
        Listing::default()
    );
    assert!(
        list_sessions(&unreadable).is_err(),
        "a configured directory's errors count"
    );
    let env = std::collections::HashMap::new();
    assert_eq!(record_dirs(Some(&first), &env), [first]);
}

#[test]
fn adopt_takes_over_a_record_another_process_wrote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut record = own_record();
    record.sidecar_pid = Some(4242);
    record.keeper_pid = Some(4241);
    let writer = StatusFile::create(dir.path(), record).expect("create");
    let path = writer.path().to_path_buf();
    // The writer dies without removing its record (a killed sidecar).
    std::mem::forget(writer);
    let mut adopted = StatusFile::adopt(dir.path(), std::process::id())
        .expect("readable")
        .expect("found");
    assert_eq!(adopted.path(), path);
    assert_eq!(adopted.record().sidecar_pid, Some(4242));
    adopted
        .set_state(SessionState::RunningUndebugged, Some("sidecar killed"))
        .expect("update");
    assert_eq!(
        read_record(&path).expect("readable").reason.as_deref(),
        Some("sidecar killed")
    );
    drop(adopted);
    assert!(!path.exists(), "the adopter owns the record now");
    let none = StatusFile::adopt(dir.path(), std::process::id()).expect("no error");
    assert!(none.is_none());
}

#[test]
fn a_record_without_process_ids_still_parses() {
    let mut json = serde_json::to_value(own_record()).expect("serializes");
    let object = json.as_object_mut().expect("an object");
    object.remove("sidecar_pid");
    object.remove("keeper_pid");
    let back: StatusRecord = serde_json::from_value(json).expect("old records parse");
    assert_eq!(back.sidecar_pid, None);
    assert_eq!(back.keeper_pid, None);
}

/// Runs `f` on a thread and waits at most 10 s for it: a read that blocks fails the test
/// instead of hanging it.
fn within_bound<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("returned within 10 s (a blocked open or an endless read hangs here)")
}

/// Anyone may write to the sessions directory: a FIFO, a link to `/dev/zero` and an
/// oversized file under record names are refused at once, without blocking (`status`
/// hung on the FIFO) and without reading on (it grew to 8.5 GB on `/dev/zero`).
#[test]
fn hostile_files_under_record_names_are_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sessions = dir.path().join(SESSIONS_DIR);
    fs::create_dir(&sessions).expect("sessions dir");
    nix::unistd::mkfifo(
        &sessions.join("99999.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o666),
    )
    .expect("mkfifo");
    std::os::unix::fs::symlink("/dev/zero", sessions.join("12345.json")).expect("symlink");
    fs::write(sessions.join("777.json"), vec![b' '; 100 * 1024]).expect("big file");
    let cases = [
        ("99999.json", "FIFO"),
        ("12345.json", ""),
        ("777.json", "larger than"),
    ];
    for (name, says) in cases {
        let path = sessions.join(name);
        let err = within_bound(move || read_record(&path).expect_err("refused"));
        assert!(format!("{err:#}").contains(says), "{name}: {err:#}");
    }
    let state_dir = dir.path().to_path_buf();
    let listing = within_bound(move || list_sessions(&state_dir).expect("listing"));
    assert!(listing.sessions.is_empty());
    assert_eq!(listing.unreadable.len(), 3, "{:?}", listing.unreadable);
}
