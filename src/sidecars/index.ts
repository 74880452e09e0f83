// The sidecar engine layer (issue 8): sidecar containers of a hybrid pod on a Docker-API engine.
// Importing this module does not load dockerode; SidecarEngine.connect() does.
export { SidecarEngine } from './engine.ts';
export type { CreatedSidecar, EngineVersion, PullOptions, PullProgress, SidecarEngineOptions, SidecarExecOptions, SidecarLogOptions, SidecarSummary } from './engine.ts';
export { SidecarEngineError, SidecarEngineUnavailable, isNotFound } from './errors.ts';
export type { SidecarErrorReason } from './errors.ts';
export { parseEngineAddress, resolveEngineEndpoint, wellKnownSockets } from './endpoint.ts';
export type { EngineEndpoint } from './endpoint.ts';
export { containerHash, createBody, engineTime, LABELS, nonRootImageUserProblem, sidecarName, statusFromInspect } from './spec.ts';
export type { CreateBody, PodIdentity, SidecarMount, SidecarSpec, SidecarState, SidecarStatus } from './spec.ts';
export { FrameDemuxer } from './streams.ts';
export type { SidecarProcess, SidecarStreamOptions } from './streams.ts';
