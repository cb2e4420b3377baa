import { STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1, bit } from './defs.js';
import { VirtioError } from './errors.js';
import type { DriverTransport } from './transport.js';

/**
 * Steps 1–6 of device initialisation as a driver does it (VirtIO 1.2 §3.1.1):
 * reset and wait for the device to finish it (§4.1.4.3.2), ACKNOWLEDGE,
 * DRIVER, read the offered features, write the subset `choose(offered)`
 * returns, FEATURES_OK and re-read it. A device without VERSION_1, or one
 * that refuses the subset, is left in FAILED and the error says which.
 * Returns the accepted features; the caller then does its device-specific
 * set-up and `driverOk`.
 */
export async function negotiateFeatures(t: DriverTransport, choose: (offered: bigint) => bigint, resetTimeoutMs = 5000): Promise<bigint> {
  await t.setStatus(0);
  const deadline = Date.now() + resetTimeoutMs;
  while ((await t.status()) !== 0) {
    if (Date.now() > deadline) throw new VirtioError('device-needs-reset', 'the device did not finish its reset in time', {});
    await new Promise((r) => setTimeout(r, 1));
  }
  await t.setStatus(STATUS_ACKNOWLEDGE);
  await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  const offered = await t.deviceFeatures();
  if ((offered & bit(VIRTIO_F_VERSION_1)) === 0n) {
    await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED);
    throw new VirtioError('feature-missing', 'the device does not offer VIRTIO_F_VERSION_1', { offered });
  }
  // Never more than offered, whatever `choose` returns (§2.2.1: a driver MUST NOT accept a feature not offered).
  const accepted = offered & choose(offered);
  await t.setDriverFeatures(accepted);
  await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
  if (((await t.status()) & STATUS_FEATURES_OK) === 0) {
    await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED);
    throw new VirtioError('features-rejected', `the device refused features ${accepted.toString(16)}`, { accepted });
  }
  return accepted;
}

/** Step 8 of §3.1.1: DRIVER_OK, then check the device took it and did not ask for a reset. */
export async function driverOk(t: DriverTransport): Promise<void> {
  await t.setStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  const st = await t.status();
  if ((st & STATUS_DEVICE_NEEDS_RESET) !== 0 || (st & STATUS_DRIVER_OK) === 0) {
    throw new VirtioError('device-needs-reset', `the device did not start (status 0x${st.toString(16)})`, { status: st });
  }
}
