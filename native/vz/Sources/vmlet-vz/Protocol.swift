// UNTESTED: never compiled (written without a Mac or a Swift toolchain). See docs/VZ-HELPER-PROTOCOL.md.
//
// The JSON-lines protocol of vmlet's vz driver: messages in and out, and VZErrorDomain codes mapped to the
// stable names vmlet relies on (src/drivers/vz/protocol.ts holds the same table).
import Foundation
import Virtualization

let protocolVersion = 1
let helperVersion = "0.1.0"

/// One JSON object per line. JSONSerialization keeps this free of Codable boilerplate for a small protocol.
func encodeLine(_ object: [String: Any]) -> Data {
    var message = object
    message["v"] = protocolVersion
    var data = (try? JSONSerialization.data(withJSONObject: message, options: [.sortedKeys])) ?? Data("{}".utf8)
    data.append(0x0a)
    return data
}

struct HelperError: Error {
    let name: String
    let message: String
    let domain: String?
    let code: Int?

    init(name: String, message: String, domain: String? = nil, code: Int? = nil) {
        self.name = name
        self.message = message
        self.domain = domain
        self.code = code
    }

    var json: [String: Any] {
        var out: [String: Any] = ["name": name, "message": message]
        if let domain { out["domain"] = domain }
        if let code { out["code"] = code }
        return out
    }

    /// VZErrorDomain codes (https://developer.apple.com/documentation/virtualization/vzerror/code) by name.
    static let vzNames: [Int: String] = [
        1: "InternalError",
        2: "InvalidVirtualMachineConfiguration",
        3: "InvalidVirtualMachineState",
        4: "InvalidVirtualMachineStateTransition",
        5: "InvalidDiskImage",
        6: "VirtualMachineLimitExceeded",  // VZError.Code.virtualMachineLimitExceeded (macOS 12+)
        7: "NetworkError",
        8: "OutOfDiskSpace",
        9: "OperationCancelled",
        10: "NotSupported",
        11: "SaveFailed",
        12: "RestoreFailed",
    ]

    static func from(_ error: Error) -> HelperError {
        if let e = error as? HelperError { return e }
        let ns = error as NSError
        // VZErrorDomain: https://developer.apple.com/documentation/virtualization/vzerrordomain
        let name = ns.domain == VZErrorDomain ? (vzNames[ns.code] ?? "VZError\(ns.code)") : "HostError"
        return HelperError(name: name, message: ns.localizedDescription, domain: ns.domain, code: ns.code)
    }

    static func badRequest(_ message: String) -> HelperError { HelperError(name: "BadRequest", message: message) }
}

/// VZVirtualMachine.State as the protocol's state names.
/// https://developer.apple.com/documentation/virtualization/vzvirtualmachine/state-swift.enum
func stateName(_ state: VZVirtualMachine.State?) -> String {
    guard let state else { return "idle" }
    switch state {
    case .stopped: return "stopped"
    case .running: return "running"
    case .paused: return "paused"
    case .error: return "error"
    case .starting: return "starting"
    case .pausing: return "pausing"
    case .resuming: return "resuming"
    case .stopping: return "stopping"
    case .saving: return "saving"      // macOS 14+
    case .restoring: return "restoring" // macOS 14+
    @unknown default: return "error"
    }
}

/// Reads fields of a decoded request with type checks.
struct Fields {
    let raw: [String: Any]
    func string(_ key: String) throws -> String {
        guard let v = raw[key] as? String, !v.isEmpty else { throw HelperError.badRequest("\(key): a non-empty string is required") }
        return v
    }
    func optionalString(_ key: String) -> String? { raw[key] as? String }
    func int(_ key: String) throws -> Int {
        guard let v = raw[key] as? NSNumber else { throw HelperError.badRequest("\(key): a number is required") }
        return v.intValue
    }
    func bool(_ key: String) -> Bool { (raw[key] as? Bool) ?? false }
    func object(_ key: String) throws -> Fields {
        guard let v = raw[key] as? [String: Any] else { throw HelperError.badRequest("\(key): an object is required") }
        return Fields(raw: v)
    }
    func objects(_ key: String) throws -> [Fields] {
        guard let v = raw[key] as? [[String: Any]] else { throw HelperError.badRequest("\(key): an array of objects is required") }
        return v.map(Fields.init)
    }
}
