//! The wgpu instance, adapter, device and pipelines: created once, on first use, and shared
//! by every later call (wgpu's `Device` and `Queue` are thread-safe).
//!
//! The adapter is chosen among those wgpu enumerates on the backends `WGPU_BACKEND` allows
//! (all by default): the one whose name contains `WGPU_ADAPTER_NAME` when that is set, else
//! the best by type (discrete, integrated, virtual, software; `WGPU_POWER_PREF=low` puts
//! integrated first), native backends before GL.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::cache::Cache;
use super::contract::{binding, SPAN_BYTES};
use super::shader;
use crate::error::CtcError;

/// The adapter fastctc runs on, as `fastctc.gpu_info()` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub name: String,
    /// `"vulkan"`, `"metal"`, `"dx12"` or `"gl"`.
    pub backend: String,
    /// `"discrete"`, `"integrated"`, `"virtual"`, `"cpu"` (a software rasteriser) or `"other"`.
    pub device_type: String,
    pub driver: String,
    pub driver_info: String,
    pub vendor: u32,
    pub device: u32,
    /// Whether float64 input runs on this adapter.
    pub shader_f64: bool,
    /// Invocations per workgroup (one workgroup per sample).
    pub workgroup_size: u32,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroups_per_dimension: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroup_storage_size: u32,
}

/// The compiled kernels of one float type.
pub(crate) struct Kernels {
    pub normalise: wgpu::ComputePipeline,
    pub forward: wgpu::ComputePipeline,
    pub backward: wgpu::ComputePipeline,
}

/// Everything a call needs from the device.
pub(crate) struct Context {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pub limits: wgpu::Limits,
    pub layout: wgpu::BindGroupLayout,
    /// Buffers kept from the last call, reused while large enough. The lock also serialises
    /// calls from several threads.
    pub cache: Mutex<Cache>,
    /// What the estimate of frames per dispatch is divided by: doubled each time a driver
    /// cut loops short (see `run.rs`), and remembered for later calls.
    pub span_divisor: AtomicUsize,
    f32: Kernels,
    f64: OnceLock<Result<Kernels, CtcError>>,
    lost: Arc<AtomicBool>,
    /// The process that opened the device: a forked child inherits this context but not
    /// the device's threads and driver state (using it hung).
    pid: u32,
    // Kept alive with the device.
    _adapter: wgpu::Adapter,
    _instance: wgpu::Instance,
}

static CONTEXT: OnceLock<Result<Context, CtcError>> = OnceLock::new();

/// The shared context, created on the first call. A failure is remembered too: the process
/// would find the same drivers again.
pub(crate) fn get() -> Result<&'static Context, CtcError> {
    let context = CONTEXT.get_or_init(open).as_ref().map_err(Clone::clone)?;
    if context.pid != std::process::id() {
        return Err(CtcError::Gpu {
            message: "this process was forked from one that had opened the GPU, and a GPU \
                      device does not survive fork; start GPU workers with the 'spawn' start \
                      method (multiprocessing.get_context('spawn')), or use device='cpu' in \
                      forked workers"
                .to_owned(),
        });
    }
    if context.lost.load(Ordering::Relaxed) {
        return Err(CtcError::Gpu {
            message: "the GPU device was lost (driver reset or removal); restart the process"
                .to_owned(),
        });
    }
    Ok(context)
}

impl Context {
    /// The kernels for float32 (`f64 = false`) or float64 input.
    pub fn kernels(&self, f64: bool) -> Result<&Kernels, CtcError> {
        if !f64 {
            return Ok(&self.f32);
        }
        if !self.info.shader_f64 {
            return Err(CtcError::GpuUnsupportedDtype {
                dtype: "float64",
                adapter: format!("{} ({})", self.info.name, self.info.backend),
            });
        }
        self.f64
            .get_or_init(|| {
                build_kernels(&self.device, &self.layout, true, self.info.workgroup_size)
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn backend_name(backend: wgpu::Backend) -> &'static str {
    match backend {
        wgpu::Backend::Vulkan => "vulkan",
        wgpu::Backend::Metal => "metal",
        wgpu::Backend::Dx12 => "dx12",
        wgpu::Backend::Gl => "gl",
        wgpu::Backend::BrowserWebGpu => "webgpu",
        wgpu::Backend::Noop => "noop",
    }
}

fn device_type_name(device_type: wgpu::DeviceType) -> &'static str {
    match device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete",
        wgpu::DeviceType::IntegratedGpu => "integrated",
        wgpu::DeviceType::VirtualGpu => "virtual",
        wgpu::DeviceType::Cpu => "cpu",
        wgpu::DeviceType::Other => "other",
    }
}

fn backends_list(backends: wgpu::Backends) -> String {
    let names: Vec<&str> = [
        (wgpu::Backends::VULKAN, "Vulkan"),
        (wgpu::Backends::METAL, "Metal"),
        (wgpu::Backends::DX12, "DX12"),
        (wgpu::Backends::GL, "GL"),
    ]
    .iter()
    .filter(|(flag, _)| {
        backends.contains(*flag) && wgpu::Instance::enabled_backend_features().contains(*flag)
    })
    .map(|&(_, name)| name)
    .collect();
    if names.is_empty() {
        "no backend".to_owned()
    } else {
        names.join(", ")
    }
}

/// Lower is better.
fn rank(info: &wgpu::AdapterInfo, low_power: bool) -> (u8, u8) {
    let kind = match (info.device_type, low_power) {
        (wgpu::DeviceType::DiscreteGpu, false) | (wgpu::DeviceType::IntegratedGpu, true) => 0,
        (wgpu::DeviceType::IntegratedGpu, false) | (wgpu::DeviceType::DiscreteGpu, true) => 1,
        (wgpu::DeviceType::VirtualGpu, _) => 2,
        (wgpu::DeviceType::Other, _) => 3,
        (wgpu::DeviceType::Cpu, _) => 4,
    };
    let backend = match info.backend {
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (kind, backend)
}

/// The workgroup size for an adapter: `FASTCTC_GPU_WORKGROUP_SIZE` when set to a supported
/// size, else 32 on software rasterisers (a CPU thread runs a whole workgroup, and every
/// barrier switches between its SIMD slices: on lavapipe 32 is 1.3x faster than 64 and 2.4x
/// faster than 128) and 256 on GPUs; never more than the adapter allows.
fn workgroup_size(limits: &wgpu::Limits, device_type: wgpu::DeviceType) -> u32 {
    let requested = std::env::var("FASTCTC_GPU_WORKGROUP_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|v| shader::WORKGROUP_SIZES.contains(v));
    let preferred = requested.unwrap_or(match device_type {
        wgpu::DeviceType::Cpu => 32,
        _ => 256,
    });
    // The reduction array holds WG vec4<f64> (32 bytes each) in the float64 module.
    let fits = |size: u32| {
        size <= limits.max_compute_invocations_per_workgroup
            && size <= limits.max_compute_workgroup_size_x
            && size * 32 <= limits.max_compute_workgroup_storage_size
    };
    shader::WORKGROUP_SIZES
        .iter()
        .rev()
        .copied()
        .find(|&size| size <= preferred && fits(size))
        .unwrap_or(shader::WORKGROUP_SIZES[0])
}

fn unavailable(tried: String, message: impl Into<String>) -> CtcError {
    CtcError::GpuUnavailable {
        tried,
        message: message.into(),
    }
}

fn open() -> Result<Context, CtcError> {
    let backends = wgpu::InstanceDescriptor::new_without_display_handle_from_env().backends;
    let from_env = std::env::var("WGPU_BACKEND").ok();
    // Native backends first; GL (through EGL, which may print warnings while it probes for a
    // display) only when they offer no adapter.
    let mut instance = None;
    let mut adapters = Vec::new();
    for set in [backends - wgpu::Backends::GL, backends & wgpu::Backends::GL] {
        if set.is_empty() || !adapters.is_empty() {
            continue;
        }
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        descriptor.backends = set;
        let candidate = wgpu::Instance::new(descriptor);
        adapters = pollster::block_on(candidate.enumerate_adapters(set));
        instance = Some(candidate);
    }

    let mut tried = format!("backends {}", backends_list(backends));
    if let Some(value) = &from_env {
        tried.push_str(&format!(" (WGPU_BACKEND={value})"));
    }
    if adapters.is_empty() {
        tried.push_str("; no adapters found");
    } else {
        let found: Vec<String> = adapters
            .iter()
            .map(|a| {
                let info = a.get_info();
                format!(
                    "{} ({}, {})",
                    info.name,
                    backend_name(info.backend),
                    device_type_name(info.device_type)
                )
            })
            .collect();
        tried.push_str(&format!("; adapters found: {}", found.join(", ")));
    }

    let compute = |a: &wgpu::Adapter| {
        a.get_downlevel_capabilities()
            .flags
            .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    };
    let wanted = std::env::var("WGPU_ADAPTER_NAME")
        .ok()
        .map(|name| name.trim().to_lowercase())
        .filter(|name| !name.is_empty());
    let low_power = wgpu::PowerPreference::from_env() == Some(wgpu::PowerPreference::LowPower);
    let mut candidates: Vec<wgpu::Adapter> = adapters
        .into_iter()
        .filter(|a| {
            wanted
                .as_ref()
                .is_none_or(|name| a.get_info().name.to_lowercase().contains(name))
        })
        .collect();
    if candidates.is_empty() {
        return Err(match &wanted {
            Some(name) => unavailable(
                tried,
                format!("no adapter's name contains '{name}' (WGPU_ADAPTER_NAME)"),
            ),
            None => unavailable(tried, "no GPU adapter found"),
        });
    }
    candidates.retain(compute);
    candidates.sort_by_key(|a| rank(&a.get_info(), low_power));
    let (Some(adapter), Some(instance)) = (candidates.into_iter().next(), instance) else {
        return Err(unavailable(tried, "no adapter supports compute shaders"));
    };

    let adapter_info = adapter.get_info();
    let limits = adapter.limits();
    let shader_f64 = adapter.features().contains(wgpu::Features::SHADER_F64);
    let features = if shader_f64 {
        wgpu::Features::SHADER_F64
    } else {
        wgpu::Features::empty()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("fastctc"),
        required_features: features,
        required_limits: limits.clone(),
        memory_hints: wgpu::MemoryHints::Performance,
        ..Default::default()
    }))
    .map_err(|e| {
        unavailable(
            tried.clone(),
            format!("could not open {}: {e}", adapter_info.name),
        )
    })?;
    let lost = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&lost);
    device.set_device_lost_callback(move |_, _| flag.store(true, Ordering::Relaxed));
    // Every call runs inside error scopes (see `run.rs`); anything else is dropped rather
    // than left to wgpu's default handler, which panics.
    device.on_uncaptured_error(Arc::new(|_| {}));

    let info = GpuInfo {
        name: adapter_info.name.clone(),
        backend: backend_name(adapter_info.backend).to_owned(),
        device_type: device_type_name(adapter_info.device_type).to_owned(),
        driver: adapter_info.driver.clone(),
        driver_info: adapter_info.driver_info.clone(),
        vendor: adapter_info.vendor,
        device: adapter_info.device,
        shader_f64,
        workgroup_size: workgroup_size(&limits, adapter_info.device_type),
        max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
        max_buffer_size: limits.max_buffer_size,
        max_compute_workgroups_per_dimension: limits.max_compute_workgroups_per_dimension,
        max_compute_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_compute_workgroup_storage_size: limits.max_compute_workgroup_storage_size,
    };
    let layout = bind_group_layout(&device);
    let f32 = build_kernels(&device, &layout, false, info.workgroup_size)
        .map_err(|e| unavailable(tried.clone(), e.to_string()))?;
    Ok(Context {
        device,
        queue,
        info,
        limits,
        layout,
        cache: Mutex::new(Cache::default()),
        span_divisor: AtomicUsize::new(1),
        f32,
        f64: OnceLock::new(),
        lost,
        pid: std::process::id(),
        _adapter: adapter,
        _instance: instance,
    })
}

/// Bindings of `lattice.wgsl`: info, scales, lp (read-only), grad, work, out (read-write), and
/// the span of frames (uniform, dynamic offset).
fn bind_group_layout(device: &wgpu::Device) -> wgpu::BindGroupLayout {
    let entry = |(binding, _name, read_only): (u32, &str, bool)| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    // The span of frames a dispatch covers: one uniform buffer, a dynamic offset per dispatch.
    let span = wgpu::BindGroupLayoutEntry {
        binding: binding::SPAN,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(SPAN_BYTES),
        },
        count: None,
    };
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("fastctc lattice"),
        entries: &[
            entry(binding::STORAGE[0]),
            entry(binding::STORAGE[1]),
            entry(binding::STORAGE[2]),
            entry(binding::STORAGE[3]),
            entry(binding::STORAGE[4]),
            entry(binding::STORAGE[5]),
            span,
        ],
    })
}

fn build_kernels(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    f64: bool,
    workgroup_size: u32,
) -> Result<Kernels, CtcError> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("fastctc lattice"),
        source: wgpu::ShaderSource::Wgsl(shader::source(f64, workgroup_size).into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("fastctc lattice"),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                // Every workgroup variable is written before it is read.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    let kernels = Kernels {
        normalise: pipeline(shader::NORMALISE),
        forward: pipeline(shader::FORWARD),
        backward: pipeline(shader::BACKWARD),
    };
    match pollster::block_on(scope.pop()) {
        None => Ok(kernels),
        Some(error) => Err(CtcError::Gpu {
            message: format!(
                "the driver rejected fastctc's {} shaders: {error}",
                if f64 { "float64" } else { "float32" }
            ),
        }),
    }
}
