// The vz driver's public surface: the runtime needs VzDriver.open(); the rest is for tests and tools.
export { VzDriver, type VzDriverOptions } from './driver.ts';
export { AGENT_VSOCK_PORT, MACOS_AUTOMOUNT_TAG, macForId, startConfig, vzPaths } from './config.ts';
export { VzVm } from './vm.ts';
export { discoverIp, parseArp, parseDhcpdLeases } from './ip.ts';
