//! Parquet output through the Apache Arrow crates: one record batch per
//! hour of readings, Snappy pages, row groups of at most
//! [`ROW_GROUP_ROWS`] rows so the encoder's buffers stay small. Times are
//! `TIMESTAMP(MILLIS, UTC)`, which DuckDB and pandas read as
//! timezone-aware instants.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::ExportError;
use super::columns::{self, Column, Type};
use crate::readback::Reading;
use crate::stream::Kind;

/// Rows per row group: about a month of one meter's demand, a few MB.
const ROW_GROUP_ROWS: usize = 1 << 19;

/// A Parquet file being written.
pub struct Writer {
    inner: ArrowWriter<Box<dyn Write + Send>>,
    schema: SchemaRef,
    kind: Kind,
    target: String,
}

/// The Arrow type of a column.
fn data_type(ty: Type) -> DataType {
    match ty {
        Type::Text => DataType::Utf8,
        Type::Float => DataType::Float64,
        Type::Int => DataType::Int64,
        Type::Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
    }
}

/// The schema of `kind`'s export; the key columns are never null.
pub fn schema(kind: Kind) -> Schema {
    let fields: Vec<Field> = columns::all(kind)
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(c.name, data_type(c.ty), i >= columns::KEYS.len()))
        .collect();
    Schema::new(fields)
}

impl Writer {
    /// Starts a file of `kind`'s schema on `out`.
    pub fn new(
        out: Box<dyn Write + Send>,
        kind: Kind,
        target: &str,
    ) -> Result<Writer, ExportError> {
        let schema: SchemaRef = Arc::new(schema(kind));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let inner = ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| {
            ExportError::Parquet {
                target: target.to_string(),
                detail: e.to_string(),
            }
        })?;
        Ok(Writer {
            inner,
            schema,
            kind,
            target: target.to_string(),
        })
    }

    /// Appends one batch of readings.
    pub fn write(&mut self, readings: &[Reading]) -> Result<(), ExportError> {
        if readings.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = readings.iter().map(super::record).collect();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let mut ids = StringBuilder::new();
        let mut slots = time_builder(readings.len());
        let mut polled = time_builder(readings.len());
        for r in readings {
            ids.append_value(r.cloud_id.as_str());
            slots.append_value(r.slot_ms);
            polled.append_value(r.polled_ms);
        }
        arrays.push(Arc::new(ids.finish()));
        arrays.push(Arc::new(slots.finish()));
        arrays.push(Arc::new(polled.finish()));
        for c in columns::values(self.kind) {
            arrays.push(column(c, &records));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| self.err(e))?;
        self.inner.write(&batch).map_err(|e| self.err(e))
    }

    /// Writes the footer; the file is readable only after this.
    pub fn finish(self) -> Result<(), ExportError> {
        let target = self.target.clone();
        self.inner
            .close()
            .map(|_| ())
            .map_err(|e| ExportError::Parquet {
                target,
                detail: e.to_string(),
            })
    }

    fn err(&self, e: impl std::fmt::Display) -> ExportError {
        ExportError::Parquet {
            target: self.target.clone(),
            detail: e.to_string(),
        }
    }
}

fn time_builder(n: usize) -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC")
}

fn column(c: &Column, records: &[serde_json::Map<String, serde_json::Value>]) -> ArrayRef {
    match c.ty {
        Type::Text => {
            let mut b = StringBuilder::new();
            for r in records {
                b.append_option(columns::text(r, c.name));
            }
            Arc::new(b.finish())
        }
        Type::Float => {
            let mut b = Float64Builder::with_capacity(records.len());
            for r in records {
                b.append_option(columns::float(r, c.name));
            }
            Arc::new(b.finish())
        }
        Type::Int => {
            let mut b = Int64Builder::with_capacity(records.len());
            for r in records {
                b.append_option(columns::int(r, c.name));
            }
            Arc::new(b.finish())
        }
        Type::Time => {
            let mut b = time_builder(records.len());
            for r in records {
                b.append_option(columns::time(r, c.name));
            }
            Arc::new(b.finish())
        }
    }
}
