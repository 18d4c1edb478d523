//! `COPY ... FROM STDIN` and `COPY ... TO STDOUT` on the wire.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Sink, SinkExt, stream};
use pgwire::api::ClientInfo;
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyResponse, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use sealdb_sql::copy::{CopyFormat, data_row_fields};
use sealdb_sql::{Engine, Output};

use crate::encode;
use crate::error::sql_error_to_wire;
use crate::query::session_of;

/// Text format on the wire (the COPY data itself says text or CSV).
const TEXT: i8 = 0;

/// The CopyOutResponse and one CopyData message per row (pgwire counts
/// the messages for the `COPY n` tag); a CSV header rides with the first row.
pub(crate) fn copy_out(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    batches: &[datafusion::arrow::record_batch::RecordBatch],
    format: &CopyFormat,
) -> PgWireResult<CopyResponse> {
    let fields = encode::fields(schema, &Format::UnifiedText);
    let rows = encode::rows(&fields, batches)?;
    let count = fields.len();
    let mut header = format.header.then(|| format.header_line(schema));
    let mut messages = Vec::with_capacity(rows.len().max(1));
    for row in &rows {
        let mut line = header.take().unwrap_or_default();
        for (i, value) in data_row_fields(&row.data, count).into_iter().enumerate() {
            if i > 0 {
                line.push(format.delimiter);
            }
            format.push_field(&mut line, value);
        }
        line.push(b'\n');
        messages.push(Ok(CopyData::new(line.into())));
    }
    if let Some(header) = header {
        messages.push(Ok(CopyData::new(header.into())));
    }
    Ok(CopyResponse::new(TEXT, count, stream::iter(messages)))
}

/// The CopyInResponse: the client may send data.
pub(crate) fn copy_in(columns: usize) -> CopyResponse {
    CopyResponse::new(TEXT, columns, stream::empty())
}

/// Feeds CopyData to the session's running `COPY ... FROM STDIN`.
pub(crate) struct CopyIn {
    engine: Arc<Engine>,
}

impl CopyIn {
    pub(crate) fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

impl Debug for CopyIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CopyIn")
    }
}

#[async_trait]
impl CopyHandler for CopyIn {
    async fn on_copy_data<C>(&self, client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = session_of(client)?;
        let mut session = slot.session.lock().await;
        self.engine.copy_data(&mut session, &copy_data.data).await;
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = session_of(client)?;
        let output = {
            let mut session = slot.session.lock().await;
            self.engine
                .copy_done(&mut session)
                .await
                .map_err(|e| sql_error_to_wire(&e))?
        };
        let rows = match output {
            Output::Command { rows, .. } => rows.unwrap_or(0),
            _ => 0,
        };
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(rows).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let slot = match session_of(client) {
            Ok(slot) => slot,
            Err(e) => return e,
        };
        let mut session = slot.session.lock().await;
        let error = self.engine.copy_fail(&mut session, &fail.message).await;
        sql_error_to_wire(&error)
    }
}
