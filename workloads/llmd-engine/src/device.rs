//! Choosing where inference runs: `cpu`, `cuda` or `cuda:N`, and the weight dtype.

use candle_core::{DType, Device};

use crate::error::{EngineError, Result};

/// Whether this build can run on CUDA (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The device a `--device` value names; `None` picks CUDA device 0 when this build has CUDA
/// and a GPU answers, the CPU otherwise.
pub fn parse_device(spec: Option<&str>) -> Result<Device> {
    let Some(spec) = spec.map(str::trim) else {
        if !CUDA_BUILT {
            return Ok(Device::Cpu);
        }
        return Ok(match Device::new_cuda(0) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(
                    reason = %crate::error::candle_text(&e),
                    "no CUDA device, running on the CPU"
                );
                Device::Cpu
            }
        });
    };
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(EngineError::Device(format!(
                    "unknown device `{spec}` (cpu, cuda or cuda:N)"
                )))
            }
        },
    };
    cuda(ordinal)
}

/// CUDA device `ordinal`, or why there is none.
pub fn cuda(ordinal: usize) -> Result<Device> {
    if !CUDA_BUILT {
        return Err(EngineError::Device(
            "this llmd was built without CUDA support (build with `--features cuda`)".into(),
        ));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        EngineError::Device(format!(
            "CUDA device {ordinal}: {}",
            crate::error::candle_text(&e)
        ))
    })
}

/// A `--dtype` value: `f32`, `f16` or `bf16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(EngineError::InvalidRequest(format!(
            "unknown dtype `{s}` (f32, f16 or bf16)"
        ))),
    }
}

/// The device's name for logs and reports: `cpu`, `cuda:0`.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert!(parse_device(Some("cpu")).is_ok_and(|d| d.is_cpu()));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda0"] {
            let e = parse_device(Some(bad)).unwrap_err().to_string();
            assert!(e.contains("unknown device"), "{bad}: {e}");
        }
        if !CUDA_BUILT {
            let e = parse_device(Some("cuda:1")).unwrap_err().to_string();
            assert!(e.contains("without CUDA support"), "{e}");
            assert!(parse_device(None).is_ok_and(|d| d.is_cpu()));
        }
        assert_eq!(parse_dtype("BF16").unwrap(), DType::BF16);
        assert!(parse_dtype("f8").is_err());
    }
}
