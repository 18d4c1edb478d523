//! Arrow columns to PostgreSQL rows, and parameters to DataFusion values.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, NaiveTime};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int8Array,
    Int16Array, Int32Array, Int64Array, LargeBinaryArray, LargeStringArray, StringArray, StringViewArray,
    Time64MicrosecondArray, TimestampMicrosecondArray, TimestampMillisecondArray, TimestampNanosecondArray,
    TimestampSecondArray, UInt8Array, UInt16Array, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::ScalarValue;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use rust_decimal::Decimal;

/// The PostgreSQL type a column is sent as.
pub(crate) fn pg_type(data_type: &DataType) -> Type {
    match data_type {
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal128(..) => Type::NUMERIC,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::Date32 => Type::DATE,
        DataType::Time64(TimeUnit::Microsecond) => Type::TIME,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        _ => Type::TEXT,
    }
}

/// Field descriptions for a schema, in the formats the client asked for.
pub(crate) fn fields(schema: &Schema, format: &Format) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                FieldInfo::new(
                    f.name().clone(),
                    None,
                    None,
                    pg_type(f.data_type()),
                    format_for(format, i),
                )
            })
            .collect(),
    )
}

/// The format of column `i`; never panics on short format lists.
pub(crate) fn format_for(format: &Format, i: usize) -> FieldFormat {
    match format {
        Format::UnifiedText => FieldFormat::Text,
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(v) => match v.get(i).or_else(|| if v.len() == 1 { v.first() } else { None }) {
            Some(1) => FieldFormat::Binary,
            _ => FieldFormat::Text,
        },
    }
}

/// Encodes every row of the batches.
pub(crate) fn rows(fields: &Arc<Vec<FieldInfo>>, batches: &[RecordBatch]) -> PgWireResult<Vec<DataRow>> {
    let mut out = Vec::with_capacity(batches.iter().map(|b| b.num_rows()).sum());
    let mut encoder = DataRowEncoder::new(fields.clone());
    let options = FormatOptions::default().with_null("");
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(api)?;
        for row in 0..batch.num_rows() {
            for (col, column) in batch.columns().iter().enumerate() {
                encode_value(&mut encoder, column, row, &formatters[col])?;
            }
            out.push(encoder.take_row());
        }
    }
    Ok(out)
}

fn api<E: std::error::Error + Send + Sync + 'static>(e: E) -> PgWireError {
    PgWireError::ApiError(Box::new(e))
}

fn encode_value(
    enc: &mut DataRowEncoder,
    column: &ArrayRef,
    row: usize,
    formatter: &ArrayFormatter,
) -> PgWireResult<()> {
    macro_rules! prim {
        ($arr:ty, $conv:expr) => {{
            let a = column
                .as_any()
                .downcast_ref::<$arr>()
                .ok_or_else(|| PgWireError::ApiError("column type mismatch".into()))?;
            let v = if a.is_null(row) {
                None
            } else {
                Some($conv(a.value(row)))
            };
            enc.encode_field(&v)
        }};
    }
    match column.data_type() {
        DataType::Boolean => prim!(BooleanArray, |v: bool| v),
        DataType::Int8 => prim!(Int8Array, |v: i8| i16::from(v)),
        DataType::Int16 => prim!(Int16Array, |v: i16| v),
        DataType::UInt8 => prim!(UInt8Array, |v: u8| i16::from(v)),
        DataType::Int32 => prim!(Int32Array, |v: i32| v),
        DataType::UInt16 => prim!(UInt16Array, |v: u16| i32::from(v)),
        DataType::Int64 => prim!(Int64Array, |v: i64| v),
        DataType::UInt32 => prim!(UInt32Array, |v: u32| i64::from(v)),
        DataType::Float32 => prim!(Float32Array, |v: f32| v),
        DataType::Float64 => prim!(Float64Array, |v: f64| v),
        DataType::Utf8 => prim!(StringArray, |v: &str| v.to_owned()),
        DataType::LargeUtf8 => prim!(LargeStringArray, |v: &str| v.to_owned()),
        DataType::Utf8View => prim!(StringViewArray, |v: &str| v.to_owned()),
        DataType::Binary => prim!(BinaryArray, |v: &[u8]| v.to_vec()),
        DataType::LargeBinary => prim!(LargeBinaryArray, |v: &[u8]| v.to_vec()),
        DataType::Date32 => prim!(Date32Array, |v: i32| NaiveDate::from_num_days_from_ce_opt(v + 719_163)
            .unwrap_or_default()),
        DataType::Time64(TimeUnit::Microsecond) => prim!(Time64MicrosecondArray, |v: i64| {
            NaiveTime::from_num_seconds_from_midnight_opt((v / 1_000_000) as u32, ((v % 1_000_000) * 1000) as u32)
                .unwrap_or_default()
        }),
        DataType::Timestamp(unit, tz) => {
            let micros = match unit {
                TimeUnit::Second => column
                    .as_any()
                    .downcast_ref::<TimestampSecondArray>()
                    .map(|a| (!a.is_null(row)).then(|| a.value(row).saturating_mul(1_000_000))),
                TimeUnit::Millisecond => column
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .map(|a| (!a.is_null(row)).then(|| a.value(row).saturating_mul(1000))),
                TimeUnit::Microsecond => column
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .map(|a| (!a.is_null(row)).then(|| a.value(row))),
                TimeUnit::Nanosecond => column
                    .as_any()
                    .downcast_ref::<TimestampNanosecondArray>()
                    .map(|a| (!a.is_null(row)).then(|| a.value(row) / 1000)),
            }
            .ok_or_else(|| PgWireError::ApiError("timestamp column type mismatch".into()))?;
            let utc = micros.and_then(DateTime::from_timestamp_micros);
            if tz.is_some() {
                enc.encode_field(&utc)
            } else {
                enc.encode_field(&utc.map(|d| d.naive_utc()))
            }
        }
        DataType::Decimal128(_, scale) => {
            let a = column.as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
            let v = if a.is_null(row) {
                None
            } else {
                Decimal::try_from_i128_with_scale(a.value(row), (*scale).max(0) as u32).ok()
            };
            if v.is_none() && !a.is_null(row) {
                // Too wide for rust_decimal: send the exact text.
                return enc.encode_field_with_type_and_format(
                    &Some(formatter.value(row).to_string()),
                    &Type::TEXT,
                    FieldFormat::Text,
                    &Default::default(),
                );
            }
            enc.encode_field(&v)
        }
        _ => {
            let v = if column.is_null(row) {
                None
            } else {
                Some(formatter.value(row).to_string())
            };
            enc.encode_field(&v)
        }
    }
}

/// The PostgreSQL type a parameter is described as.
pub(crate) fn param_type(data_type: Option<&DataType>) -> Type {
    data_type.map(pg_type).unwrap_or(Type::TEXT)
}

/// Decodes parameter `i` into a value of `target` (the type DataFusion
/// inferred), reading text or binary as the client sent it with `declared`.
pub(crate) fn decode_param(
    bytes: Option<&Bytes>,
    binary: bool,
    declared: Option<&Type>,
    target: Option<&DataType>,
) -> Result<ScalarValue, String> {
    let target = target.cloned().unwrap_or(DataType::Utf8);
    let Some(bytes) = bytes else {
        return ScalarValue::try_from(&target).map_err(|e| e.to_string());
    };
    let value = if !binary {
        let text = std::str::from_utf8(bytes).map_err(|_| "parameter is not valid UTF-8".to_owned())?;
        let text = if target == DataType::Boolean {
            normalize_bool(text)
        } else {
            text.to_owned()
        };
        ScalarValue::Utf8(Some(text))
    } else {
        decode_binary(bytes, declared.unwrap_or(&Type::TEXT))?
    };
    if value.data_type() == target {
        return Ok(value);
    }
    value
        .cast_to(&target)
        .map_err(|e| format!("cannot use {value} as {target}: {e}"))
}

fn normalize_bool(text: &str) -> String {
    match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "yes" | "y" | "on" | "1" => "true".into(),
        "f" | "false" | "no" | "n" | "off" | "0" => "false".into(),
        other => other.to_owned(),
    }
}

fn decode_binary(bytes: &[u8], declared: &Type) -> Result<ScalarValue, String> {
    let fixed = |n: usize| -> Result<&[u8], String> {
        if bytes.len() == n {
            Ok(bytes)
        } else {
            Err(format!(
                "binary {declared} parameter has {} bytes, expected {n}",
                bytes.len()
            ))
        }
    };
    Ok(match *declared {
        Type::BOOL => ScalarValue::Boolean(Some(fixed(1)?[0] != 0)),
        Type::INT2 => ScalarValue::Int16(Some(i16::from_be_bytes(fixed(2)?.try_into().map_err(|_| "int2")?))),
        Type::INT4 => ScalarValue::Int32(Some(i32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "int4")?))),
        Type::INT8 => ScalarValue::Int64(Some(i64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "int8")?))),
        Type::FLOAT4 => ScalarValue::Float32(Some(f32::from_be_bytes(fixed(4)?.try_into().map_err(|_| "float4")?))),
        Type::FLOAT8 => ScalarValue::Float64(Some(f64::from_be_bytes(fixed(8)?.try_into().map_err(|_| "float8")?))),
        Type::BYTEA => ScalarValue::Binary(Some(bytes.to_vec())),
        _ => {
            ScalarValue::Utf8(Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                format!("binary {declared} parameter is not supported; send it as text")
            })?))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_format_lists_never_panic() {
        assert_eq!(format_for(&Format::Individual(vec![]), 3), FieldFormat::Text);
        assert_eq!(format_for(&Format::Individual(vec![1]), 3), FieldFormat::Binary);
        assert_eq!(format_for(&Format::Individual(vec![0, 1]), 5), FieldFormat::Text);
    }

    #[test]
    fn parameters_decode_from_text_and_binary_into_the_inferred_type() {
        let text = Bytes::from_static(b"42");
        assert_eq!(
            decode_param(Some(&text), false, None, Some(&DataType::Int64)),
            Ok(ScalarValue::Int64(Some(42)))
        );
        let bin = Bytes::copy_from_slice(&7i32.to_be_bytes());
        assert_eq!(
            decode_param(Some(&bin), true, Some(&Type::INT4), Some(&DataType::Int64)),
            Ok(ScalarValue::Int64(Some(7)))
        );
        assert_eq!(
            decode_param(None, false, None, Some(&DataType::Utf8)),
            Ok(ScalarValue::Utf8(None))
        );
        assert_eq!(
            decode_param(Some(&Bytes::from_static(b"t")), false, None, Some(&DataType::Boolean)),
            Ok(ScalarValue::Boolean(Some(true)))
        );
        assert!(decode_param(Some(&Bytes::from_static(b"abc")), false, None, Some(&DataType::Int32)).is_err());
        assert!(decode_param(Some(&Bytes::from_static(b"\x00\x01")), true, Some(&Type::INT8), None).is_err());
    }
}
