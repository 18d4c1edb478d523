//! Users, roles and privileges through SQL, the sys tables, the catalog
//! queries of psql's \dt and \d, and transaction statements, all over psql.

mod support;

use support::*;

fn setup() -> TestServer {
    let server = TestServer::start(&[]);
    psql(
        &server.admin(),
        "create table accounts (id int, owner text, balance double); insert into accounts values (1, 'ann', 10.5), (2, 'ben', 20); create table audit (id int)",
    )
    .expect_ok();
    server
}

#[test]
fn a_user_without_a_grant_gets_42501_and_grants_and_revokes_take_effect() {
    let server = setup();
    psql(&server.admin(), "create user kim with password 'Kim-pw-1'").expect_ok();
    let kim = server.password_conn("kim");
    let err = psql_pw(&kim, "Kim-pw-1", "select * from accounts").expect_err("42501");
    assert!(err.contains("GRANT SELECT ON public.accounts TO kim"), "{err}");
    psql(&server.admin(), "grant select on accounts to kim").expect_ok();
    assert_eq!(
        psql_pw(&kim, "Kim-pw-1", "select count(*) from accounts")
            .expect_ok()
            .trim(),
        "2"
    );
    psql_pw(&kim, "Kim-pw-1", "insert into accounts values (3, 'kim', 0)").expect_err("42501");
    psql_pw(&kim, "Kim-pw-1", "update accounts set balance = 0 where id = 1").expect_err("42501");
    psql_pw(&kim, "Kim-pw-1", "delete from accounts where id = 1").expect_err("42501");
    // A join needs SELECT on both tables.
    psql_pw(&kim, "Kim-pw-1", "select * from accounts a join audit b on a.id = b.id").expect_err("public.audit");
    // Subqueries are checked too.
    psql_pw(
        &kim,
        "Kim-pw-1",
        "select * from accounts where id in (select id from audit)",
    )
    .expect_err("public.audit");
    psql(&server.admin(), "grant all on accounts to kim").expect_ok();
    psql_pw(&kim, "Kim-pw-1", "insert into accounts values (3, 'kim', 0); update accounts set balance = 1 where id = 3; delete from accounts where id = 3").expect_ok();
    psql(&server.admin(), "revoke all on accounts from kim").expect_ok();
    psql_pw(&kim, "Kim-pw-1", "select * from accounts").expect_err("42501");
}

#[test]
fn grants_on_all_tables_and_through_roles() {
    let server = setup();
    psql(&server.admin(), "create role readers; grant select on all tables in schema public to readers; create user lou with password 'Lou-pw-1'; grant readers to lou").expect_ok();
    let lou = server.password_conn("lou");
    psql_pw(&lou, "Lou-pw-1", "select * from accounts; select * from audit").expect_ok();
    psql_pw(&lou, "Lou-pw-1", "insert into audit values (1)").expect_err("42501");
    let grants = psql(
        &server.admin(),
        "select grantee, object, privilege from sys.grants order by grantee",
    )
    .expect_ok();
    assert!(grants.contains("readers|ALL TABLES|SELECT"), "{grants}");
    psql(&server.admin(), "revoke readers from lou").expect_ok();
    psql_pw(&lou, "Lou-pw-1", "select * from accounts").expect_err("42501");
    // A role cannot log in.
    psql_pw(&server.password_conn("readers"), "x", "select 1").expect_err("password authentication failed");
}

#[test]
fn only_administrators_manage_users_and_read_other_sessions() {
    let server = setup();
    psql(&server.admin(), "create user max with password 'Max-pw-1'").expect_ok();
    let max = server.password_conn("max");
    psql_pw(&max, "Max-pw-1", "create user evil with password 'x'").expect_err("42501");
    psql_pw(&max, "Max-pw-1", "grant select on accounts to max").expect_err("42501");
    psql_pw(&max, "Max-pw-1", "select * from sys.users").expect_err("42501");
    psql_pw(&max, "Max-pw-1", "select * from sys.certificates").expect_err("42501");
    psql_pw(&max, "Max-pw-1", "create table mine (a int)").expect_err("42501");
    psql_pw(&max, "Max-pw-1", "alter system reload tls").expect_err("42501");
    // Own sessions only; an admin session is open at the same time.
    let mut admin = LongSession::open(&server.admin());
    assert_eq!(admin.query("select 1"), "1");
    let seen = psql_pw(&max, "Max-pw-1", "select distinct user_name from sys.sessions").expect_ok();
    assert_eq!(seen.trim(), "max");
    let all = psql(
        &server.admin(),
        "select count(*) from sys.sessions where user_name = 'admin'",
    )
    .expect_ok();
    assert_eq!(all.trim(), "2");
    // A user may change their own password, and nothing else.
    psql_pw(&max, "Max-pw-1", "alter user max with password 'Max-pw-2'").expect_ok();
    psql_pw(&max, "Max-pw-2", "alter user max superuser").expect_err("42501");
    psql(&server.admin(), "drop user max").expect_ok();
    psql_pw(&max, "Max-pw-2", "select 1").expect_err("password authentication failed");
}

#[test]
fn psql_describe_commands_answer() {
    let server = setup();
    let out = psql(&server.admin(), "\\dt").expect_ok();
    assert!(
        out.contains("public|accounts|table") && out.contains("public|audit|table"),
        "{out}"
    );
    let out = psql(&server.admin(), "\\d accounts").expect_ok();
    assert!(
        out.contains("id|integer") && out.contains("owner|text") && out.contains("balance|double precision"),
        "{out}"
    );
}

#[test]
fn sys_tables_show_sessions_users_and_certificates() {
    let server = setup();
    psql(&server.admin(), "create user nan with password 'Nan-pw-1' require ssl").expect_ok();
    let out = psql(
        &server.admin(),
        "select user_name, superuser, can_login, has_password, require from sys.users order by user_name",
    )
    .expect_ok();
    assert_eq!(out.trim(), "admin|t|t|f|NONE\nnan|f|t|t|SSL");
    let out = psql(
        &server.admin(),
        "select auth_method, ssl, tls_version, client_cert_subject, client_cert_serial is not null, client_cert_not_after is not null, application_name from sys.sessions",
    )
    .expect_ok();
    assert_eq!(out.trim(), "certificate|t|TLSv1_3|O=sealdb, CN=admin|t|t|psql");
    let out = psql(
        &server.admin(),
        "select role, days_left > 300 from sys.certificates order by role",
    )
    .expect_ok();
    assert_eq!(out.trim(), "server|t\nserver-chain|t\ntrusted-ca|t");
    assert_eq!(psql(&server.admin(), "show ssl").expect_ok().trim(), "on");
}

#[test]
fn transactions_are_accepted_and_queries_work_in_them() {
    let server = setup();
    let out = psql(
        &server.admin(),
        "begin; insert into audit values (7); commit; start transaction; select count(*) from audit; rollback",
    )
    .expect_ok();
    assert!(
        out.contains("COMMIT") && out.contains("\n1\n") && out.contains("ROLLBACK"),
        "{out}"
    );
}

/// A query string of several statements is one implicit transaction, as
/// in PostgreSQL: the client hears the result of each statement that ran,
/// and when one fails the writes of those before it are rolled back, so
/// nothing the client was told failed is kept.
#[test]
fn a_query_string_is_one_implicit_transaction() {
    let server = setup();
    let admin = server.admin();
    let failed = psql(
        &admin,
        "insert into audit values (1); insert into audit values (2); select 1/0",
    );
    assert!(!failed.ok, "{}", failed.stdout);
    assert_eq!(
        failed.stdout, "INSERT 0 1\nINSERT 0 1\n",
        "each statement that ran is answered"
    );
    assert!(failed.stderr.contains("Divide by zero"), "{}", failed.stderr);
    assert_eq!(
        psql(&admin, "select count(*) from audit").expect_ok(),
        "0\n",
        "rolled back"
    );

    // Later statements see the earlier ones' writes; all of them commit.
    let out = psql(
        &admin,
        "insert into audit values (3); insert into audit values (4); select count(*) from audit",
    )
    .expect_ok();
    assert_eq!(out, "INSERT 0 1\nINSERT 0 1\n2\n");
    // DDL commits the writes before it; the rest rolls back on a failure.
    psql(
        &admin,
        "insert into audit values (5); create table later (id int); insert into audit values (6); select 1/0",
    )
    .expect_err("Divide by zero");
    assert_eq!(
        psql(&admin, "select id from audit order by id").expect_ok(),
        "3\n4\n5\n"
    );
    // BEGIN in the string takes the statements before it into its block.
    psql(
        &admin,
        "insert into audit values (7); begin; insert into audit values (8); rollback",
    )
    .expect_ok();
    assert_eq!(psql(&admin, "select count(*) from audit").expect_ok(), "3\n");
    // A new connection after a failed string is in no transaction.
    psql(&admin, "insert into audit values (9); select no_such_column from audit").expect_err("no_such_column");
    psql(&admin, "insert into audit values (10); vacuum audit").expect_err("cannot run inside a transaction block");
    assert_eq!(psql(&admin, "select count(*) from audit").expect_ok(), "3\n");
}

#[test]
fn server_files_are_off_limits_even_to_administrators() {
    let server = setup();
    psql(&server.admin(), "copy accounts to '/tmp/sealdb-leak.csv'").expect_err("42501");
    psql(
        &server.admin(),
        "create external table x stored as csv location '/etc/passwd'",
    )
    .expect_err("42501");
    assert!(!std::path::Path::new("/tmp/sealdb-leak.csv").exists());
}

#[test]
fn joins_aggregates_and_window_functions_run() {
    let server = setup();
    let out = psql(
        &server.admin(),
        "select owner, sum(balance) over (order by id) as running, rank() over (order by balance desc) from accounts order by id",
    )
    .expect_ok();
    assert_eq!(out.trim(), "ann|10.5|2\nben|30.5|1");
}

#[test]
fn command_tags_are_the_ones_postgresql_sends() {
    let server = TestServer::start(&[]);
    let out = psql(
        &server.admin(),
        "create table t (a int); insert into t values (1), (2); update t set a = 3 where a = 1; delete from t where a = 2; drop table t",
    )
    .expect_ok();
    assert_eq!(out.trim(), "CREATE TABLE\nINSERT 0 2\nUPDATE 1\nDELETE 1\nDROP TABLE");
}

#[test]
fn repeated_statements_see_new_rows_new_tables_the_clock_and_revoked_grants() {
    // One long session, so that its statement cache is in play.
    let server = TestServer::start(&[]);
    psql(&server.admin(), "create table c (a int); insert into c values (1); create user ola with password 'Ola-pw-1'; grant select on c to ola")
        .expect_ok();
    let mut admin = LongSession::open(&server.admin());
    assert_eq!(admin.query("select count(*) from c"), "1");
    assert_eq!(admin.query("insert into c values (2); select 'inserted'"), "inserted");
    assert_eq!(admin.query("select count(*) from c"), "2");
    assert_eq!(admin.query("select 1"), "1");
    assert_eq!(admin.query("select 1"), "1");
    // The table is replaced from another session: the same text plans anew.
    psql(
        &server.admin(),
        "drop table c; create table c (a text, b text); insert into c values ('x', 'y'); grant select on c to ola",
    )
    .expect_ok();
    assert_eq!(admin.query("select * from c"), "x|y");
    let first = admin.query("select to_char(now(), '%H:%M:%S%.6f')");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = admin.query("select to_char(now(), '%H:%M:%S%.6f')");
    assert_ne!(first, second, "now() was served from a cached plan");
    // Privileges are checked on every execution.
    let mut ola = LongSession::open(&format!("{} password=Ola-pw-1", server.password_conn("ola")));
    assert_eq!(ola.query("select count(*) from c"), "1");
    psql(&server.admin(), "revoke select on c from ola").expect_ok();
    let refused = ola.query("select count(*) from c");
    assert!(refused.contains("permission denied"), "{refused}");
}

/// The statements `pgbench -i` sends: several tables in one DROP TABLE and
/// one TRUNCATE (which commit together), PostgreSQL's fillfactor, COPY
/// ... WITH (freeze on), and VACUUM (a checkpoint and compaction here).
#[test]
fn the_statements_pgbench_initialization_sends_work() {
    let server = TestServer::start(&[]);
    let admin = server.admin();
    psql(&admin, "create table a (n int) with (fillfactor=100)").expect_ok();
    psql(
        &admin,
        "create table b (n int not null, filler char(84)) with (fillfactor = 90)",
    )
    .expect_ok();
    psql(&admin, "create table bad (n int) with (fillfactor=5)").expect_err("from 10 to 100");
    let out = psql_input(&admin, "copy a from stdin with (freeze on)", "1\n2\n3\n");
    assert!(out.ok, "{}", out.stderr);
    psql(&admin, "insert into b values (1, 'x'), (2, 'y')").expect_ok();
    psql(&admin, "vacuum analyze a").expect_ok();
    psql(&admin, "vacuum").expect_ok();
    psql(&admin, "vacuum (verbose, analyze) a, b").expect_ok();
    psql(&admin, "vacuum nosuch").expect_err("relation \"nosuch\" does not exist");
    psql(&admin, "begin; vacuum a").expect_err("cannot run inside a transaction block");

    // One TRUNCATE of two tables inside a block: both, or (rolled back) neither.
    psql(&admin, "begin; truncate table a, b; rollback").expect_ok();
    assert_eq!(
        psql(&admin, "select (select count(*) from a) + (select count(*) from b)").expect_ok(),
        "5\n"
    );
    psql(&admin, "truncate table a, b").expect_ok();
    assert_eq!(
        psql(&admin, "select (select count(*) from a) + (select count(*) from b)").expect_ok(),
        "0\n"
    );

    // DROP TABLE of several: all must exist unless IF EXISTS; none goes otherwise.
    psql(&admin, "drop table a, nosuch, b").expect_err("\"nosuch\" does not exist");
    assert_eq!(psql(&admin, "select count(*) from a").expect_ok(), "0\n");
    psql(&admin, "drop table if exists a, nosuch, b").expect_ok();
    psql(&admin, "select count(*) from a").expect_err("a");
    psql(&admin, "select count(*) from b").expect_err("b");

    // The data that survived a VACUUM survives a restart.
    psql(&admin, "create table c (n int)").expect_ok();
    psql(&admin, "insert into c select value from generate_series(1, 100)").expect_ok();
    psql(&admin, "delete from c where n > 10").expect_ok();
    psql(&admin, "vacuum c").expect_ok();
    let dir = server.stop();
    let server = TestServer::start_in(dir, &[]);
    assert_eq!(
        psql(&server.admin(), "select count(*), sum(n) from c").expect_ok(),
        "10|55\n"
    );
}

/// Deeply nested SQL is refused with 54001 and the server goes on serving:
/// chains of operators (one level deeper per operator, which the parser
/// builds in a loop with no limit of its own), nested parentheses and
/// subqueries, from any user, before a table is looked at. A statement at
/// the limit runs. Before the bound (and DataFusion's
/// `recursive_protection`, which alone was not enough), `SELECT 1+1+...`
/// with a thousand terms overflowed a thread's stack and aborted the server.
#[test]
fn deeply_nested_sql_is_refused_with_54001_and_the_server_keeps_serving() {
    let server = TestServer::start(&[]);
    let admin = server.admin();
    psql(&admin, "create user nobody with password 'Nobody-pw-1'").expect_ok();
    let depth = sealdb_sql::MAX_EXPRESSION_DEPTH - 10;
    let at_limit = format!("select 1{} as s", "+1".repeat(depth - 1));
    assert_eq!(psql_script(&admin, &at_limit).expect_ok().trim(), depth.to_string());
    for sql in [
        format!("select 1{}", "+1".repeat(100_000)),
        format!(
            "select count(*) from no_such_table where {}",
            vec!["a = 1"; 50_000].join(" or ")
        ),
        format!("select 'x'{}", "::text".repeat(50_000)),
        format!("select {}1{}", "(".repeat(10_000), ")".repeat(10_000)),
        format!(
            "select * from {}t{}",
            "(select * from ".repeat(2_000),
            ") s".repeat(2_000)
        ),
    ] {
        let err = psql_script(&admin, &sql).expect_err("54001");
        assert!(err.contains("statement too complex"), "{err}");
    }
    let nobody = server.password_conn("nobody");
    psql_pw(&nobody, "Nobody-pw-1", &format!("select 1{}", "+1".repeat(20_000))).expect_err("54001");
    assert_eq!(psql(&admin, "select 41 + 1").expect_ok().trim(), "42");
}
