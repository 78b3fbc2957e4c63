//! The flow's `Host` over the raw proxy-wasm ABI: every host status is handled (the SDK's
//! wrappers panic on unexpected statuses, and a panic aborts the VM, after which every
//! request gets 503). The only other module that talks to Envoy is `contexts`.

use std::cell::Cell;
use std::ptr::null_mut;
use std::time::Duration;

use proxy_wasm::types::LogLevel;
use tollgate_core::flow::{Buffer, GrpcCall, Headers, Host, Level, MetricKind};
use tollgate_core::store::{Store, StoreError, CREATE_CAS};

const MAP_REQUEST_HEADERS: u32 = 0;
const MAP_RESPONSE_HEADERS: u32 = 2;
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        kind: u32,
        start: usize,
        max: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(
        kind: u32,
        start: usize,
        size: usize,
        data: *const u8,
        len: usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map: u32, out: *mut *mut u8, out_size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_set_property(
        path: *const u8,
        path_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_send_local_response(
        status: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> u32;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
    fn proxy_continue_stream(stream: u32) -> u32;
    fn proxy_define_metric(kind: u32, name: *const u8, name_size: usize, out: *mut u32) -> u32;
    fn proxy_increment_metric(id: u32, offset: i64) -> u32;
    fn proxy_record_metric(id: u32, value: u64) -> u32;
    fn proxy_get_metric(id: u32, out: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        args: *const u8,
        args_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> u32;
}

/// Takes ownership of a host-allocated buffer (allocated through the SDK's exported
/// `proxy_on_memory_allocate`, i.e. this module's global allocator).
unsafe fn owned(ptr: *mut u8, size: usize) -> Vec<u8> {
    if ptr.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(ptr, size, size)
    }
}

pub fn log(level: LogLevel, msg: &str) {
    unsafe {
        proxy_log(level as u32, msg.as_ptr(), msg.len());
    }
}

fn buffer_kind(b: Buffer) -> u32 {
    match b {
        Buffer::RequestBody => 0,
        Buffer::ResponseBody => 1,
        Buffer::GrpcReply => 5,
        Buffer::PluginConfig => 7,
    }
}

fn header_map(map: u32) -> Headers {
    let mut ptr = null_mut();
    let mut size = 0;
    let bytes = unsafe {
        match proxy_get_header_map_pairs(map, &mut ptr, &mut size) {
            OK => owned(ptr, size),
            _ => Vec::new(),
        }
    };
    Headers::decode(bytes)
}

fn set_header(map: u32, name: &str, value: &str) {
    unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len());
    }
}

fn remove_header(map: u32, name: &str) {
    unsafe {
        proxy_remove_header_map_value(map, name.as_ptr(), name.len());
    }
}

thread_local! {
    /// The id of `tollgate_shared_data_keys_created_total`, defined on first use.
    static KEYS_CREATED: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Envoy, as one callback sees it: made at the start of every callback, so the callback's
/// work shares one clock reading (one host call, not ten).
pub struct Envoy {
    now_ms: Cell<Option<u64>>,
}

impl Envoy {
    pub fn new() -> Envoy {
        Envoy {
            now_ms: Cell::new(None),
        }
    }
}

/// Envoy shared data: one store for all workers of the VM id. Every key tollgate creates is
/// written with `CREATE_CAS` (see `store`), so counting those writes counts the keys: Envoy
/// never frees one, and `tollgate_shared_data_keys_created_total` shows the key set stays
/// bounded (flat after the configuration loads).
impl Store for Envoy {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), StoreError> {
        let mut ptr = null_mut();
        let mut size = 0;
        let mut cas = 0;
        unsafe {
            match proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut size, &mut cas) {
                OK => {
                    let v = owned(ptr, size);
                    Ok((if ptr.is_null() { None } else { Some(v) }, cas))
                }
                NOT_FOUND => Ok((None, 0)),
                s => Err(StoreError::Host(s)),
            }
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let status = unsafe {
            proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            OK => {}
            CAS_MISMATCH => return Err(StoreError::CasMismatch),
            s => return Err(StoreError::Host(s)),
        }
        if cas == CREATE_CAS {
            let id = KEYS_CREATED.with(Cell::get).or_else(|| {
                define_metric(
                    MetricKind::Counter,
                    "tollgate_shared_data_keys_created_total",
                )
            });
            KEYS_CREATED.with(|c| c.set(id));
            if let Some(id) = id {
                unsafe {
                    proxy_increment_metric(id, 1);
                }
            }
        }
        Ok(())
    }
}

fn define_metric(kind: MetricKind, name: &str) -> Option<u32> {
    let kind = match kind {
        MetricKind::Counter => 0,
        MetricKind::Gauge => 1,
        MetricKind::Histogram => 2,
    };
    let mut id = 0;
    unsafe { (proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) == OK).then_some(id) }
}

impl Host for Envoy {
    fn now_ms(&self) -> u64 {
        if let Some(ms) = self.now_ms.get() {
            return ms;
        }
        let mut ns = 0u64;
        unsafe {
            proxy_get_current_time_nanoseconds(&mut ns);
        }
        let ms = ns / 1_000_000;
        self.now_ms.set(Some(ms));
        ms
    }

    fn log(&self, level: Level, msg: &str) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
            Level::Critical => LogLevel::Critical,
        };
        log(level, msg);
    }

    fn request_headers(&self) -> Headers {
        header_map(MAP_REQUEST_HEADERS)
    }

    fn response_headers(&self) -> Headers {
        header_map(MAP_RESPONSE_HEADERS)
    }

    fn set_request_header(&mut self, name: &str, value: &str) {
        set_header(MAP_REQUEST_HEADERS, name, value)
    }

    fn remove_request_header(&mut self, name: &str) {
        remove_header(MAP_REQUEST_HEADERS, name)
    }

    fn set_response_header(&mut self, name: &str, value: &str) {
        set_header(MAP_RESPONSE_HEADERS, name, value)
    }

    fn remove_response_header(&mut self, name: &str) {
        remove_header(MAP_RESPONSE_HEADERS, name)
    }

    fn read(&self, buffer: Buffer, start: usize, max: usize) -> Option<Vec<u8>> {
        let mut ptr = null_mut();
        let mut size = 0;
        let kind = buffer_kind(buffer);
        unsafe {
            match proxy_get_buffer_bytes(kind, start, max, &mut ptr, &mut size) {
                OK => Some(owned(ptr, size)),
                _ => None,
            }
        }
    }

    fn replace(&mut self, buffer: Buffer, start: usize, size: usize, data: &[u8]) -> bool {
        let kind = buffer_kind(buffer);
        unsafe { proxy_set_buffer_bytes(kind, start, size, data.as_ptr(), data.len()) == OK }
    }

    /// Filter state readable as `%FILTER_STATE(wasm.<name>:PLAIN)%` (one path segment: a
    /// multi-segment path would be joined with NUL and not be readable there).
    fn set_property(&mut self, name: &str, value: &str) {
        unsafe {
            proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len());
        }
    }

    /// Segments joined by NUL, as the host expects.
    fn property(&self, path: &[&str]) -> Option<String> {
        let joined;
        let name = match path {
            [one] => *one,
            _ => {
                joined = path.join("\0");
                &joined
            }
        };
        let mut ptr = null_mut();
        let mut size = 0;
        let bytes = unsafe {
            match proxy_get_property(name.as_ptr(), name.len(), &mut ptr, &mut size) {
                OK => owned(ptr, size),
                _ => return None,
            }
        };
        String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    }

    fn send_response(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let h = Headers::encode(headers);
        let details = "tollgate";
        unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                h.as_ptr(),
                h.len(),
                -1,
            );
        }
    }

    fn resume_request(&mut self) {
        unsafe {
            proxy_continue_stream(0);
        }
    }

    fn clear_route_cache(&mut self) {
        let name = "clear_route_cache";
        let mut ptr = null_mut();
        let mut size = 0;
        unsafe {
            let status = proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                null_mut(),
                0,
                &mut ptr,
                &mut size,
            );
            if status == OK {
                drop(owned(ptr, size));
            }
        }
    }

    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Option<u32> {
        define_metric(kind, name)
    }

    fn increment_metric(&mut self, id: u32, by: i64) {
        unsafe {
            proxy_increment_metric(id, by);
        }
    }

    fn record_metric(&mut self, id: u32, value: u64) {
        unsafe {
            proxy_record_metric(id, value);
        }
    }

    fn metric(&self, id: u32) -> Option<u64> {
        let mut v = 0u64;
        unsafe { (proxy_get_metric(id, &mut v) == OK).then_some(v) }
    }

    /// Through the SDK: it registers the token, so the reply reaches this context.
    fn dispatch_grpc(&mut self, call: &GrpcCall<'_>) -> Result<u32, u32> {
        proxy_wasm::hostcalls::dispatch_grpc_call(
            call.cluster,
            call.service,
            call.method,
            Vec::new(),
            Some(call.message),
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|s| s as u32)
    }

    fn set_tick_period_ms(&mut self, ms: u64) {
        unsafe {
            proxy_set_tick_period_milliseconds(u32::try_from(ms).unwrap_or(u32::MAX));
        }
    }
}
