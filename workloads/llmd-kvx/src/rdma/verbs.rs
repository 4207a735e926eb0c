//! Owners of the rdma-core objects the RDMA transport uses: an opened device with its
//! protection domain, a registered staging buffer, and per-transfer completion queues and
//! RC queue pairs. Every raw pointer lives here, freed by `Drop` in the order verbs
//! requires (QP before its CQ, MR before the PD, PD before the context).
//!
//! The `ibverbs` crate (0.9) wraps only SEND/RECV and keeps its handles private, so the
//! READ data path is written on its rdma-core bindings (`ibverbs-sys`) directly.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use ibverbs_sys as ffi;
use serde::{Deserialize, Serialize};

use super::RdmaError;

/// Verbs port used (every device we target has one port).
const PORT: u8 = 1;
/// READs in flight per queue pair (also the send queue's and CQ's depth).
pub(crate) const MAX_OUTSTANDING: usize = 32;
/// Largest single READ. With the READ depth below, at most 1 MiB is in flight per QP:
/// soft-RoCE dropped packets (and waited out retransmission timers) with 16 × 1 MiB in
/// flight, 11 MB/s against 23 MB/s this way; on hardware 1 MiB in flight still covers the
/// bandwidth-delay product many times over.
pub(crate) const MAX_READ: usize = 128 << 10;

fn os_err(what: &str) -> RdmaError {
    RdmaError::Verbs(format!("{what}: {}", std::io::Error::last_os_error()))
}

fn errno_err(what: &str, errno: i32) -> RdmaError {
    RdmaError::Verbs(format!(
        "{what}: {}",
        std::io::Error::from_raw_os_error(errno)
    ))
}

/// An opened device: context, protection domain and the port facts a connection needs.
pub(crate) struct Device {
    ctx: NonNull<ffi::ibv_context>,
    pd: NonNull<ffi::ibv_pd>,
    pub name: String,
    lid: u16,
    gid_index: u8,
    gid: [u8; 16],
    active_mtu: u32,
    max_rd_atom: u8,
}

// SAFETY: verbs objects may be used from any thread (libibverbs is thread-safe); the
// handles are only freed in Drop, when no other reference exists.
unsafe impl Send for Device {}
// SAFETY: as above; every method takes &self and calls thread-safe verbs.
unsafe impl Sync for Device {}

impl Device {
    /// Opens `name` and checks that its port is up and has a usable GID.
    pub fn open(name: &str) -> Result<Arc<Device>, RdmaError> {
        let mut n = 0i32;
        // SAFETY: n is a valid out-pointer; the list is freed below.
        let list = unsafe { ffi::ibv_get_device_list(&mut n) };
        if list.is_null() {
            return Err(RdmaError::NoDevice(format!(
                "cannot list RDMA devices: {}",
                std::io::Error::last_os_error()
            )));
        }
        let mut ctx = std::ptr::null_mut();
        for i in 0..usize::try_from(n).unwrap_or(0) {
            // SAFETY: the list holds n valid device pointers.
            let dev = unsafe { *list.add(i) };
            // SAFETY: dev is valid; the name is a NUL-terminated string owned by it.
            let dev_name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(dev)) };
            if dev_name.to_bytes() == name.as_bytes() {
                // SAFETY: dev is valid until the list is freed; an opened context outlives it.
                ctx = unsafe { ffi::ibv_open_device(dev) };
                break;
            }
        }
        // SAFETY: list came from ibv_get_device_list and is freed once.
        unsafe { ffi::ibv_free_device_list(list) };
        let ctx = NonNull::new(ctx).ok_or_else(|| {
            RdmaError::NoDevice(format!("no RDMA device {name:?} could be opened"))
        })?;
        // From here on, `Closer` frees the context if a later step fails.
        struct Closer(Option<NonNull<ffi::ibv_context>>);
        impl Drop for Closer {
            fn drop(&mut self) {
                if let Some(c) = self.0 {
                    // SAFETY: opened above, nothing else refers to it.
                    unsafe { ffi::ibv_close_device(c.as_ptr()) };
                }
            }
        }
        let mut closer = Closer(Some(ctx));
        let mut port = ffi::ibv_port_attr::default();
        // SAFETY: ctx is open; port is a valid out-struct of the type the call expects.
        let rc = unsafe { ffi::ibv_query_port(ctx.as_ptr(), PORT, &mut port as *mut _ as *mut _) };
        if rc != 0 {
            return Err(errno_err("ibv_query_port", rc));
        }
        if port.state != ffi::ibv_port_state::IBV_PORT_ACTIVE {
            return Err(RdmaError::NoDevice(format!(
                "RDMA device {name}: port {PORT} is not active"
            )));
        }
        let mut dattr = ffi::ibv_device_attr::default();
        // SAFETY: ctx is open; dattr is a valid out-struct.
        let rc = unsafe { ffi::ibv_query_device(ctx.as_ptr(), &mut dattr) };
        if rc != 0 {
            return Err(errno_err("ibv_query_device", rc));
        }
        // RoCE v2 needs a routable GID: prefer an IPv4-mapped one (::ffff:a.b.c.d), else the
        // first non-zero entry (InfiniBand's subnet GID, or an IPv6 one).
        let mut chosen: Option<(u8, [u8; 16])> = None;
        for i in 0..port.gid_tbl_len.clamp(0, 256) {
            let mut gid = ffi::ibv_gid::default();
            // SAFETY: ctx is open; gid is a valid out-union; i is within the table.
            if unsafe { ffi::ibv_query_gid(ctx.as_ptr(), PORT, i, &mut gid) } != 0 {
                continue;
            }
            // SAFETY: every bit pattern of the union is a valid byte array.
            let raw = unsafe { gid.raw };
            if raw == [0u8; 16] {
                continue;
            }
            let v4 = raw[..10] == [0u8; 10] && raw[10] == 0xff && raw[11] == 0xff;
            let Ok(idx) = u8::try_from(i) else { break };
            if v4 {
                chosen = Some((idx, raw));
                break;
            }
            if chosen.is_none() {
                chosen = Some((idx, raw));
            }
        }
        let (gid_index, gid) = chosen.ok_or_else(|| {
            RdmaError::NoDevice(format!("RDMA device {name}: no usable GID on port {PORT}"))
        })?;
        // SAFETY: ctx is open.
        let pd = NonNull::new(unsafe { ffi::ibv_alloc_pd(ctx.as_ptr()) })
            .ok_or_else(|| os_err("ibv_alloc_pd"))?;
        closer.0 = None;
        Ok(Arc::new(Device {
            ctx,
            pd,
            name: name.to_string(),
            lid: port.lid,
            gid_index,
            gid,
            active_mtu: port.active_mtu,
            // READs the responder serves at once (see MAX_READ).
            max_rd_atom: u8::try_from(dattr.max_qp_rd_atom.clamp(1, 8)).unwrap_or(1),
        }))
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: every MR, QP and CQ holds an Arc to this device, so none is left.
        unsafe {
            ffi::ibv_dealloc_pd(self.pd.as_ptr());
            ffi::ibv_close_device(self.ctx.as_ptr());
        }
    }
}

/// A page-aligned buffer registered once for local writes and remote reads.
pub(crate) struct Staging {
    /// Keeps the PD the MR belongs to alive.
    _dev: Arc<Device>,
    mr: NonNull<ffi::ibv_mr>,
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is only accessed through ranges the allocator hands out exclusively
// (see `StagingPool`); the handles are freed in Drop only.
unsafe impl Send for Staging {}
// SAFETY: as above.
unsafe impl Sync for Staging {}

impl Staging {
    pub fn new(dev: Arc<Device>, len: usize) -> Result<Staging, RdmaError> {
        let layout = std::alloc::Layout::from_size_align(len.max(4096), 4096)
            .map_err(|e| RdmaError::Verbs(format!("staging size {len}: {e}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })
            .ok_or_else(|| RdmaError::Verbs(format!("cannot allocate {len} staging bytes")))?;
        let access = ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
            | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ;
        // SAFETY: pd is live; the buffer is allocated, len bytes, and outlives the MR.
        let mr = unsafe {
            ffi::ibv_reg_mr(
                dev.pd.as_ptr(),
                ptr.as_ptr().cast(),
                layout.size(),
                access.0 as i32,
            )
        };
        let Some(mr) = NonNull::new(mr) else {
            let e = os_err("ibv_reg_mr");
            // SAFETY: allocated above with this layout, not registered.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), layout) };
            return Err(e);
        };
        Ok(Staging {
            _dev: dev,
            mr,
            ptr,
            layout,
        })
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    pub fn addr(&self, off: usize) -> u64 {
        self.ptr.as_ptr() as u64 + off as u64
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: mr is live while self is.
        unsafe { self.mr.as_ref().rkey }
    }

    fn lkey(&self) -> u32 {
        // SAFETY: mr is live while self is.
        unsafe { self.mr.as_ref().lkey }
    }

    /// The bytes of `off..off + len`.
    ///
    /// # Safety
    /// The caller owns that range exclusively (a live `StagingRange`) and no RDMA operation
    /// writes into it any more.
    pub unsafe fn slice(&self, off: usize, len: usize) -> &[u8] {
        debug_assert!(off + len <= self.len());
        // SAFETY: in bounds; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }
    }

    /// Mutable bytes of `off..off + len`.
    ///
    /// # Safety
    /// As for [`Staging::slice`], and no other reference to the range exists.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        debug_assert!(off + len <= self.len());
        // SAFETY: in bounds; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(off), len) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: the MR is deregistered before its memory is freed; no QP uses it any more
        // (transfers hold an Arc to the pool that owns this buffer).
        unsafe {
            ffi::ibv_dereg_mr(self.mr.as_ptr());
            std::alloc::dealloc(self.ptr.as_ptr(), self.layout);
        }
    }
}

/// What one side tells the other to connect an RC queue pair (sent as JSON over TCP).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QpEndpoint {
    pub qpn: u32,
    pub psn: u32,
    pub lid: u16,
    /// 16 bytes.
    pub gid: Vec<u8>,
    /// `ibv_mtu` enum value of the sender's port.
    pub mtu: u32,
    /// READs the sender can have outstanding / accept.
    pub rd_atom: u8,
}

/// A completion queue and an RC queue pair on it, for one transfer.
pub(crate) struct Qp {
    dev: Arc<Device>,
    cq: NonNull<ffi::ibv_cq>,
    qp: NonNull<ffi::ibv_qp>,
    psn: u32,
}

// SAFETY: one transfer uses a Qp from one thread at a time (moved, never shared).
unsafe impl Send for Qp {}

impl Qp {
    pub fn new(dev: Arc<Device>) -> Result<Qp, RdmaError> {
        let depth = MAX_OUTSTANDING as i32;
        // SAFETY: ctx is live; no completion channel, no context pointer.
        let cq = unsafe {
            ffi::ibv_create_cq(
                dev.ctx.as_ptr(),
                depth,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        let cq = NonNull::new(cq).ok_or_else(|| os_err("ibv_create_cq"))?;
        let mut init = ffi::ibv_qp_init_attr {
            send_cq: cq.as_ptr(),
            recv_cq: cq.as_ptr(),
            cap: ffi::ibv_qp_cap {
                max_send_wr: MAX_OUTSTANDING as u32,
                max_recv_wr: 1,
                max_send_sge: 1,
                max_recv_sge: 1,
                max_inline_data: 0,
            },
            qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
            sq_sig_all: 0,
            ..Default::default()
        };
        // SAFETY: pd and cq are live; init is a valid attribute struct.
        let qp = unsafe { ffi::ibv_create_qp(dev.pd.as_ptr(), &mut init) };
        let Some(qp) = NonNull::new(qp) else {
            let e = os_err("ibv_create_qp");
            // SAFETY: created above, unused.
            unsafe { ffi::ibv_destroy_cq(cq.as_ptr()) };
            return Err(e);
        };
        // A fresh starting PSN per connection, so stray packets of an old QP never match.
        let psn = (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ qp_num(qp))
            & 0x00ff_ffff;
        Ok(Qp { dev, cq, qp, psn })
    }

    pub fn endpoint(&self) -> QpEndpoint {
        QpEndpoint {
            qpn: qp_num(self.qp),
            psn: self.psn,
            lid: self.dev.lid,
            gid: self.dev.gid.to_vec(),
            mtu: self.dev.active_mtu,
            rd_atom: self.dev.max_rd_atom,
        }
    }

    fn modify(
        &self,
        attr: &mut ffi::ibv_qp_attr,
        mask: ffi::ibv_qp_attr_mask,
        what: &str,
    ) -> Result<(), RdmaError> {
        // SAFETY: qp is live; attr is valid for the fields mask names.
        let rc = unsafe { ffi::ibv_modify_qp(self.qp.as_ptr(), attr, mask.0 as i32) };
        if rc != 0 {
            return Err(errno_err(what, rc));
        }
        Ok(())
    }

    /// Moves the QP through INIT, RTR and RTS towards `remote`.
    pub fn connect(&self, remote: &QpEndpoint) -> Result<(), RdmaError> {
        use ffi::ibv_qp_attr_mask as M;
        let gid: [u8; 16] = remote
            .gid
            .as_slice()
            .try_into()
            .map_err(|_| RdmaError::Protocol(format!("a {}-byte GID", remote.gid.len())))?;
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_INIT,
            pkey_index: 0,
            port_num: PORT,
            qp_access_flags: (ffi::ibv_access_flags::IBV_ACCESS_LOCAL_WRITE
                | ffi::ibv_access_flags::IBV_ACCESS_REMOTE_READ)
                .0,
            ..Default::default()
        };
        self.modify(
            &mut a,
            M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS,
            "QP to INIT",
        )?;
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTR,
            path_mtu: self.dev.active_mtu.min(remote.mtu),
            dest_qp_num: remote.qpn,
            rq_psn: remote.psn,
            max_dest_rd_atomic: self.dev.max_rd_atom,
            min_rnr_timer: 12,
            ..Default::default()
        };
        a.ah_attr.dlid = remote.lid;
        a.ah_attr.port_num = PORT;
        // Always routed by GID: RoCE needs the GRH, and InfiniBand accepts it.
        a.ah_attr.is_global = 1;
        a.ah_attr.grh.dgid = ffi::ibv_gid { raw: gid };
        a.ah_attr.grh.sgid_index = self.dev.gid_index;
        a.ah_attr.grh.hop_limit = 64;
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_AV
                | M::IBV_QP_PATH_MTU
                | M::IBV_QP_DEST_QPN
                | M::IBV_QP_RQ_PSN
                | M::IBV_QP_MAX_DEST_RD_ATOMIC
                | M::IBV_QP_MIN_RNR_TIMER,
            "QP to RTR",
        )?;
        // timeout 14 (~67 ms per try) and 7 retries: a vanished peer is noticed in about
        // half a second, while a slow software RoCE peer is not mistaken for one.
        let mut a = ffi::ibv_qp_attr {
            qp_state: ffi::ibv_qp_state::IBV_QPS_RTS,
            sq_psn: self.psn,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: self.dev.max_rd_atom.min(remote.rd_atom.max(1)),
            ..Default::default()
        };
        self.modify(
            &mut a,
            M::IBV_QP_STATE
                | M::IBV_QP_SQ_PSN
                | M::IBV_QP_TIMEOUT
                | M::IBV_QP_RETRY_CNT
                | M::IBV_QP_RNR_RETRY
                | M::IBV_QP_MAX_QP_RD_ATOMIC,
            "QP to RTS",
        )
    }

    /// Posts RDMA READs of `reads` (local offset, remote address, length) into `dst`, as
    /// one linked list of signalled work requests.
    ///
    /// # Safety
    /// `dst` must stay alive, and the local ranges must not be touched, until every READ
    /// completed or this QP is dropped.
    pub unsafe fn post_reads(
        &self,
        dst: &Staging,
        rkey: u32,
        reads: &[(usize, u64, u32)],
        first_id: u64,
    ) -> Result<(), RdmaError> {
        if reads.is_empty() {
            return Ok(());
        }
        let mut sges: Vec<ffi::ibv_sge> = reads
            .iter()
            .map(|&(off, _, len)| ffi::ibv_sge {
                addr: dst.addr(off),
                length: len,
                lkey: dst.lkey(),
            })
            .collect();
        let mut wrs: Vec<ffi::ibv_send_wr> = Vec::with_capacity(reads.len());
        for (i, &(_, remote, _)) in reads.iter().enumerate() {
            let mut wr = ffi::ibv_send_wr {
                wr_id: first_id + i as u64,
                sg_list: &mut sges[i],
                num_sge: 1,
                opcode: ffi::ibv_wr_opcode::IBV_WR_RDMA_READ,
                send_flags: ffi::ibv_send_flags::IBV_SEND_SIGNALED.0,
                ..Default::default()
            };
            wr.wr.rdma.remote_addr = remote;
            wr.wr.rdma.rkey = rkey;
            wrs.push(wr);
        }
        // Link after the Vec is complete: its elements no longer move.
        let base = wrs.as_mut_ptr();
        for i in 0..wrs.len() - 1 {
            // SAFETY: i + 1 is within the Vec.
            wrs[i].next = unsafe { base.add(i + 1) };
        }
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: qp is live; the list and its SGEs live until the call returns (verbs
        // copies them); the target memory is the caller's contract.
        let rc = unsafe {
            let ctx = (*self.qp.as_ptr()).context;
            match (*ctx).ops.post_send {
                Some(post) => post(self.qp.as_ptr(), base, &mut bad),
                None => return Err(RdmaError::Verbs("the provider has no post_send".into())),
            }
        };
        if rc != 0 {
            return Err(errno_err("ibv_post_send (RDMA READ)", rc));
        }
        Ok(())
    }

    /// Polls completions into `out`; the number found (0 when none is ready).
    pub fn poll(&self, out: &mut [ffi::ibv_wc]) -> Result<usize, RdmaError> {
        // SAFETY: cq is live; out has room for out.len() completions.
        let n = unsafe {
            let ctx = (*self.cq.as_ptr()).context;
            match (*ctx).ops.poll_cq {
                Some(poll) => poll(self.cq.as_ptr(), out.len() as i32, out.as_mut_ptr()),
                None => return Err(RdmaError::Verbs("the provider has no poll_cq".into())),
            }
        };
        usize::try_from(n).map_err(|_| RdmaError::Verbs("ibv_poll_cq failed".into()))
    }
}

fn qp_num(qp: NonNull<ffi::ibv_qp>) -> u32 {
    // SAFETY: qp is live.
    unsafe { qp.as_ref().qp_num }
}

impl Drop for Qp {
    fn drop(&mut self) {
        // SAFETY: destroying the QP stops all its DMA before it returns; the CQ goes after.
        unsafe {
            ffi::ibv_destroy_qp(self.qp.as_ptr());
            ffi::ibv_destroy_cq(self.cq.as_ptr());
        }
    }
}
