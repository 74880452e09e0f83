// UNTESTED: never compiled (written without a Mac or a Swift toolchain). vmlet's own tests run the vz
// driver against a TypeScript stand-in for this program (test/fakes/fake-vz-helper.ts).
//
// vmlet-vz: one Virtualization.framework VM per process, controlled with the JSON-lines protocol of
// docs/VZ-HELPER-PROTOCOL.md on stdin/stdout and on <dir>/control.sock (the same messages; vmlet uses the
// socket so that a restarted vmlet reconnects). Usage:
//   vmlet-vz serve --dir VMDIR    serve one VM (started detached by vmlet; outlives it)
//   vmlet-vz version              {"helper":"vmlet-vz","version":...,"protocol":1,"supported":bool}
import Foundation
import Virtualization

signal(SIGPIPE, SIG_IGN)
let args = CommandLine.arguments.dropFirst()

if args.first == "version" {
    // /vzvirtualmachine/issupported
    FileHandle.standardOutput.write(encodeLine(["helper": "vmlet-vz", "version": helperVersion, "protocol": protocolVersion, "supported": VZVirtualMachine.isSupported]))
    exit(0)
}
guard args.count == 3, args.first == "serve", args.dropFirst().first == "--dir", let dir = args.last else {
    FileHandle.standardError.write(Data("usage: vmlet-vz serve --dir VMDIR | vmlet-vz version\n".utf8))
    exit(2)
}

let controlPath = (dir as NSString).appendingPathComponent("control.sock")
let exitPath = (dir as NSString).appendingPathComponent("helper-exit.json")
var sessions: [ObjectIdentifier: Session] = [:]
var machine: Machine?
var exiting = false
var controlListener: UnixListener?  // kept for the life of the process

func broadcast(_ object: [String: Any]) {
    for s in sessions.values { s.send(object) }
}

/// The VM has stopped: tell every session, leave the exit file for a vmlet that was not listening, go.
func machineStopped(cause: String, error: HelperError?) {
    guard !exiting else { return }
    exiting = true
    var event: [String: Any] = ["event": "stopped", "cause": cause]
    var record: [String: Any] = ["v": protocolVersion, "cause": cause, "at": ISO8601DateFormatter().string(from: Date())]
    if let error { event["error"] = error.json; record["error"] = error.json }
    broadcast(event)
    if let data = try? JSONSerialization.data(withJSONObject: record) { try? data.write(to: URL(fileURLWithPath: exitPath), options: .atomic) }
    machine?.closeProxies()
    unlink(controlPath)
    DispatchQueue.main.asyncAfter(deadline: .now() + 0.2) { exit(cause == "error" ? 1 : 0) }
}

func reply(_ s: Session, _ id: Any, _ error: HelperError?, _ result: [String: Any] = [:]) {
    if let error { s.send(["id": id, "ok": false, "error": error.json]) } else { s.send(["id": id, "ok": true, "result": result]) }
}

func handle(_ s: Session, _ line: String) {
    guard let raw = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else {
        return s.send(["event": "protocol-error", "error": HelperError.badRequest("not a JSON object").json])
    }
    let id = raw["id"] ?? NSNull()
    guard (raw["v"] as? Int) == protocolVersion else {
        return reply(s, id, HelperError(name: "UnsupportedVersion", message: "this helper speaks protocol \(protocolVersion)"))
    }
    let req = Fields(raw: raw)
    let op = raw["op"] as? String ?? ""
    if op == "status" { return reply(s, id, nil, ["state": stateName(machine?.vm.state)]) }
    if op == "start" {
        if machine != nil { return reply(s, id, HelperError(name: "InvalidVirtualMachineState", message: "this helper already runs its VM (one VM per process)")) }
        do {
            let config = try req.object("config")
            let m = Machine(config: try ConfigBuilder.build(config))
            m.onState = { broadcast(["event": "state", "state": $0]) }
            m.onStopped = { machineStopped(cause: $0, error: $1) }
            m.onDeviceError = { broadcast($0) }
            machine = m
            m.start(restoreFrom: req.optionalString("restoreFrom"), vsock: try config.objects("vsock")) { err in
                reply(s, id, err, ["state": stateName(m.vm.state)])
                // A VM that could not start leaves nothing behind: one VM per process, so the helper goes.
                if let err { machineStopped(cause: "error", error: err) }
            }
        } catch {
            let err = HelperError.from(error)
            reply(s, id, err)
            machineStopped(cause: "error", error: err)
        }
        return
    }
    guard let m = machine else { return reply(s, id, HelperError(name: "InvalidVirtualMachineState", message: "no VM started yet")) }
    switch op {
    case "stop":
        do { try m.requestStop(); reply(s, id, nil) } catch { reply(s, id, HelperError.from(error)) }
    case "forceStop":
        m.forceStop { reply(s, id, $0) }
    case "pause":
        m.pause { reply(s, id, $0, ["state": stateName(m.vm.state)]) }
    case "resume":
        m.resume { reply(s, id, $0, ["state": stateName(m.vm.state)]) }
    case "save":
        do { let path = try req.string("path"); m.save(path: path) { reply(s, id, $0) } } catch { reply(s, id, HelperError.from(error)) }
    default:
        reply(s, id, HelperError.badRequest("unknown op \(op)"))
    }
}

func addSession(_ s: Session) {
    sessions[ObjectIdentifier(s)] = s
    s.onLine = handle
    s.onClose = { sessions[ObjectIdentifier($0)] = nil }  // a session ending never stops the VM
    s.send(["type": "hello", "helper": "vmlet-vz", "version": helperVersion, "pid": Int(getpid()), "state": stateName(machine?.vm.state)])
}

do {
    controlListener = try UnixListener(path: controlPath) { fd in addSession(Session(readFd: fd, writeFd: fd)) }
    addSession(Session(readFd: STDIN_FILENO, writeFd: STDOUT_FILENO))
} catch {
    FileHandle.standardError.write(Data("vmlet-vz: \(HelperError.from(error).message)\n".utf8))
    exit(2)
}
// SIGTERM: stop the VM by force and exit (vmlet sends SIGKILL only when the helper does not answer).
let term = DispatchSource.makeSignalSource(signal: SIGTERM, queue: .main)
signal(SIGTERM, SIG_IGN)
term.setEventHandler {
    if let m = machine { m.forceStop { _ in } } else { unlink(controlPath); exit(0) }
}
term.resume()
dispatchMain()
