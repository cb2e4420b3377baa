/**
 * Register layout of PCI Express configuration space, as named constants.
 * Section numbers are PCI Express Base Specification 6.0 (chapter 7 for the
 * header and capabilities, §9.3 for SR-IOV, which was the separate SR-IOV
 * 1.1 specification §3 before PCIe 4.0) and PCI Local Bus 3.0 (§6.8.2, MSI-X).
 */

/** A PCIe function has 4 KiB of configuration space (§7.2.2, ECAM). */
export const CONFIG_SPACE_SIZE = 4096;
/** The first 256 bytes are PCI-compatible; extended capabilities start at 100h (§7.6). */
export const EXTENDED_CONFIG_START = 0x100;

// ── Type 0 header (§7.5.1.1 common part, §7.5.1.2 type 0) ─────────────────
export const PCI_VENDOR_ID = 0x00;
export const PCI_DEVICE_ID = 0x02;
export const PCI_COMMAND = 0x04;
export const PCI_STATUS = 0x06;
export const PCI_REVISION_ID = 0x08;
/** Class code: programming interface at 09h, sub-class 0Ah, base class 0Bh. */
export const PCI_CLASS_PROG = 0x09;
export const PCI_CACHE_LINE_SIZE = 0x0c;
export const PCI_LATENCY_TIMER = 0x0d;
export const PCI_HEADER_TYPE = 0x0e;
export const PCI_BIST = 0x0f;
/** BARn at 10h + 4n, n = 0..5 (§7.5.1.2.1). */
export const PCI_BASE_ADDRESS_0 = 0x10;
export const PCI_CARDBUS_CIS = 0x28;
export const PCI_SUBSYSTEM_VENDOR_ID = 0x2c;
export const PCI_SUBSYSTEM_ID = 0x2e;
export const PCI_ROM_ADDRESS = 0x30;
export const PCI_CAPABILITY_LIST = 0x34;
export const PCI_INTERRUPT_LINE = 0x3c;
export const PCI_INTERRUPT_PIN = 0x3d;
export const PCI_MIN_GNT = 0x3e;
export const PCI_MAX_LAT = 0x3f;
export const PCI_STD_HEADER_SIZE = 0x40;

// Command register bits (§7.5.1.1.3).
export const PCI_COMMAND_IO = 1 << 0;
export const PCI_COMMAND_MEMORY = 1 << 1;
export const PCI_COMMAND_MASTER = 1 << 2;
export const PCI_COMMAND_PARITY = 1 << 6;
export const PCI_COMMAND_SERR = 1 << 8;
export const PCI_COMMAND_INTX_DISABLE = 1 << 10;

// Status register bits (§7.5.1.1.4).
export const PCI_STATUS_INTERRUPT = 1 << 3;
export const PCI_STATUS_CAP_LIST = 1 << 4;
/** The RW1C error bits: Master Data Parity Error, Signaled/Received Target Abort, Received Master Abort, Signaled System Error, Detected Parity Error. */
export const PCI_STATUS_RW1C = (1 << 8) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 14) | (1 << 15);

// BAR low bits (§7.5.1.2.1).
export const PCI_BASE_ADDRESS_SPACE_IO = 0x1;
export const PCI_BASE_ADDRESS_MEM_TYPE_64 = 0x4;
export const PCI_BASE_ADDRESS_MEM_PREFETCH = 0x8;
export const PCI_ROM_ADDRESS_ENABLE = 0x1;

// ── Capability IDs (PCI Code and ID Assignment Specification §2) ──────────
export const PCI_CAP_ID_PM = 0x01;
export const PCI_CAP_ID_MSI = 0x05;
export const PCI_CAP_ID_EXP = 0x10;
export const PCI_CAP_ID_MSIX = 0x11;

// ── Extended capability IDs (PCI Code and ID Assignment §3) ───────────────
export const PCI_EXT_CAP_ID_ERR = 0x0001;
export const PCI_EXT_CAP_ID_DSN = 0x0003;
export const PCI_EXT_CAP_ID_ARI = 0x000e;
export const PCI_EXT_CAP_ID_SRIOV = 0x0010;

// ── Power Management capability (§7.5.2) ──────────────────────────────────
export const PCI_PM_PMC = 0x02;
export const PCI_PM_CTRL = 0x04;
export const PCI_PM_SIZEOF = 0x08;
export const PCI_PM_CTRL_STATE_MASK = 0x0003;
export const PCI_PM_CTRL_NO_SOFT_RESET = 0x0008;
export const PCI_PM_CTRL_PME_ENABLE = 0x0100;
export const PCI_PM_CTRL_DATA_SEL_MASK = 0x1e00;
export const PCI_PM_CTRL_PME_STATUS = 0x8000;

// ── MSI-X capability (§7.7.2; PCI Local Bus 3.0 §6.8.2) ───────────────────
export const PCI_MSIX_FLAGS = 0x02;
export const PCI_MSIX_TABLE = 0x04;
export const PCI_MSIX_PBA = 0x08;
export const PCI_MSIX_SIZEOF = 0x0c;
export const PCI_MSIX_FLAGS_QSIZE = 0x07ff;
export const PCI_MSIX_FLAGS_MASKALL = 0x4000;
export const PCI_MSIX_FLAGS_ENABLE = 0x8000;
/** One MSI-X table entry: Message Address, Message Upper Address, Message Data, Vector Control. */
export const PCI_MSIX_ENTRY_SIZE = 16;
export const PCI_MSIX_ENTRY_LOWER_ADDR = 0x0;
export const PCI_MSIX_ENTRY_UPPER_ADDR = 0x4;
export const PCI_MSIX_ENTRY_DATA = 0x8;
export const PCI_MSIX_ENTRY_VECTOR_CTRL = 0xc;
export const PCI_MSIX_ENTRY_CTRL_MASKBIT = 0x1;
/** MSI-X supports at most 2048 vectors (Table Size is 11 bits, N−1 encoded). */
export const PCI_MSIX_MAX_VECTORS = 2048;

// ── PCI Express capability (§7.5.3) ───────────────────────────────────────
export const PCI_EXP_FLAGS = 0x02;
export const PCI_EXP_DEVCAP = 0x04;
export const PCI_EXP_DEVCTL = 0x08;
export const PCI_EXP_DEVSTA = 0x0a;
export const PCI_EXP_LNKCAP = 0x0c;
export const PCI_EXP_LNKCTL = 0x10;
export const PCI_EXP_LNKSTA = 0x12;
export const PCI_EXP_DEVCAP2 = 0x24;
export const PCI_EXP_DEVCTL2 = 0x28;
export const PCI_EXP_DEVSTA2 = 0x2a;
export const PCI_EXP_LNKCAP2 = 0x2c;
export const PCI_EXP_LNKCTL2 = 0x30;
export const PCI_EXP_LNKSTA2 = 0x32;
/** A version 2 endpoint capability runs through Slot Status 2 (3Ah..3Bh). */
export const PCI_EXP_SIZEOF_V2 = 0x3c;
export const PCI_EXP_TYPE_ENDPOINT = 0x0;
export const PCI_EXP_TYPE_RC_END = 0x9;
export const PCI_EXP_DEVCAP_FLR = 1 << 28;
export const PCI_EXP_DEVCTL_BCR_FLR = 0x8000;
/** Device Status RW1C bits: Correctable, Non-Fatal, Fatal Error Detected, Unsupported Request Detected. */
export const PCI_EXP_DEVSTA_RW1C = 0x000f;

// ── ARI extended capability (§7.8.7) ──────────────────────────────────────
export const PCI_ARI_CAP = 0x04;
export const PCI_ARI_CTRL = 0x06;
export const PCI_ARI_SIZEOF = 0x08;

// ── Device Serial Number extended capability (§7.9.3) ─────────────────────
export const PCI_DSN_SIZEOF = 0x0c;

// ── SR-IOV extended capability (§9.3.3; SR-IOV 1.1 §3.3) ──────────────────
/** SR-IOV Capabilities (§9.3.3.2). */
export const PCI_SRIOV_CAP = 0x04;
/** SR-IOV Control (§9.3.3.3). */
export const PCI_SRIOV_CTRL = 0x08;
/** SR-IOV Status (§9.3.3.4). */
export const PCI_SRIOV_STATUS = 0x0a;
/** InitialVFs (§9.3.3.5). */
export const PCI_SRIOV_INITIAL_VF = 0x0c;
/** TotalVFs (§9.3.3.6). */
export const PCI_SRIOV_TOTAL_VF = 0x0e;
/** NumVFs (§9.3.3.7). */
export const PCI_SRIOV_NUM_VF = 0x10;
/** Function Dependency Link (§9.3.3.8). */
export const PCI_SRIOV_FUNC_LINK = 0x12;
/** First VF Offset (§9.3.3.9). */
export const PCI_SRIOV_VF_OFFSET = 0x14;
/** VF Stride (§9.3.3.10). */
export const PCI_SRIOV_VF_STRIDE = 0x16;
/** VF Device ID (§9.3.3.11); 18h..19h is RsvdP. */
export const PCI_SRIOV_VF_DID = 0x1a;
/** Supported Page Sizes (§9.3.3.12). */
export const PCI_SRIOV_SUP_PGSIZE = 0x1c;
/** System Page Size (§9.3.3.13). */
export const PCI_SRIOV_SYS_PGSIZE = 0x20;
/** VF BAR0..5 at 24h + 4n (§9.3.3.14). */
export const PCI_SRIOV_BAR = 0x24;
/** VF Migration State Array Offset (§9.3.3.15). */
export const PCI_SRIOV_VFM = 0x3c;
export const PCI_SRIOV_SIZEOF = 0x40;

export const PCI_SRIOV_CAP_VFM = 1 << 0;
export const PCI_SRIOV_CAP_ARI_PRESERVED = 1 << 1;
export const PCI_SRIOV_CTRL_VFE = 1 << 0;
export const PCI_SRIOV_CTRL_VFM = 1 << 1;
export const PCI_SRIOV_CTRL_INTR = 1 << 2;
export const PCI_SRIOV_CTRL_MSE = 1 << 3;
export const PCI_SRIOV_CTRL_ARI = 1 << 4;
export const PCI_SRIOV_STATUS_VFM = 1 << 0;
/** Page sizes every PF must support: 4K, 8K, 64K, 256K, 1M, 4M (§9.3.3.12). */
export const PCI_SRIOV_SUP_PGSIZE_MINREQ = 0x553;
/** Number of VF BARs. */
export const PCI_SRIOV_NUM_BARS = 6;
