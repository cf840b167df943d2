//! `--device cpu|cuda|metal`, with a clear error when the binary lacks the backend.

use anyhow::{bail, Result};
use candle_core::Device;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Cpu,
    Cuda,
    Metal,
}

impl DeviceArg {
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceArg::Cpu => Ok(Device::Cpu),
            DeviceArg::Cuda => {
                if !cfg!(feature = "cuda") {
                    bail!("this sampler binary was built without CUDA support (rebuild with --features cuda)");
                }
                Device::new_cuda(0).map_err(|e| anyhow::anyhow!("cannot open CUDA device 0: {e}"))
            }
            DeviceArg::Metal => {
                if !cfg!(feature = "metal") {
                    bail!("this sampler binary was built without Metal support (rebuild with --features metal)");
                }
                Device::new_metal(0).map_err(|e| anyhow::anyhow!("cannot open Metal device 0: {e}"))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeviceArg::Cpu => "cpu",
            DeviceArg::Cuda => "cuda",
            DeviceArg::Metal => "metal",
        }
    }
}
