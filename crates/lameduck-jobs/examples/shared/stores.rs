//! The benchmarks' shared servers: where they are, and removing what a run
//! left in them.

/// `$REDIS_URL`, default `redis://127.0.0.1:6379`.
pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// `$DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`.
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Drops the Postgres `schema` at `url` and deletes the Redis keys under
/// `prefix` at `redis_url`.
pub(crate) async fn clean(
    url: &str,
    schema: &str,
    redis_url: &str,
    prefix: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use lameduck_jobs::tokio_postgres;
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    let mut conn = redis::Client::open(redis_url)?.get_connection()?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)?;
    for chunk in keys.chunks(1000) {
        let _: () = redis::cmd("DEL").arg(chunk).query(&mut conn)?;
    }
    Ok(())
}
