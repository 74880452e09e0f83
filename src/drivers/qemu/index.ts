// The QEMU driver's public surface: the runtime needs QemuDriver.open(); the rest is for tests and tools.
export { QemuDriver, type QemuDriverOptions } from './driver.ts';
export { AGENT_PORT_NAME, qemuArgs, virtiofsdArgs, type QemuHost } from './args.ts';
export type { DriverLogger } from '../common/process-vm.ts';
