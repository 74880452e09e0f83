// UNTESTED: never compiled (written without a Mac or a Swift toolchain). Each API used names its Apple
// documentation page (developer.apple.com/documentation/virtualization/...).
//
// The VM: a VZVirtualMachineConfiguration from the start config of docs/VZ-HELPER-PROTOCOL.md, the
// machine itself, its delegate, and the vsock proxy (host unix socket <-> guest vsock port). Everything
// here runs on the main queue, the VM's queue (VZVirtualMachine(configuration:) uses the main queue).
import Foundation
import Virtualization

enum ConfigBuilder {
    static func build(_ c: Fields) throws -> VZVirtualMachineConfiguration {
        let config = VZVirtualMachineConfiguration()
        // cpuCount, memorySize: /vzvirtualmachineconfiguration/cpucount, /memorysize
        config.cpuCount = try c.int("cpus")
        config.memorySize = UInt64(try c.int("memoryBytes"))

        let boot = try c.object("boot")
        let kind = try boot.string("kind")
        switch kind {
        case "macos":
            // /vzmacplatformconfiguration: hardwareModel, machineIdentifier, auxiliaryStorage
            let platform = VZMacPlatformConfiguration()
            guard let hwData = Data(base64Encoded: try boot.string("hardwareModel")),
                  let hw = VZMacHardwareModel(dataRepresentation: hwData) else {  // /vzmachardwaremodel/init(datarepresentation:)
                throw HelperError.badRequest("boot.hardwareModel is not a VZMacHardwareModel data representation")
            }
            guard hw.isSupported else { throw HelperError(name: "NotSupported", message: "this Mac cannot run the image's hardware model") }
            guard let idData = Data(base64Encoded: try boot.string("machineIdentifier")),
                  let id = VZMacMachineIdentifier(dataRepresentation: idData) else {  // /vzmacmachineidentifier/init(datarepresentation:)
                throw HelperError.badRequest("boot.machineIdentifier is not a VZMacMachineIdentifier data representation")
            }
            platform.hardwareModel = hw
            platform.machineIdentifier = id
            // /vzmacauxiliarystorage/init(url:) (macOS 13)
            platform.auxiliaryStorage = VZMacAuxiliaryStorage(url: URL(fileURLWithPath: try boot.string("auxiliaryStorage")))
            config.platform = platform
            config.bootLoader = VZMacOSBootLoader()  // /vzmacosbootloader
            // macOS guests get a display device even headless (Tart does the same); no window is shown.
            // /vzmacgraphicsdeviceconfiguration, /vzmacgraphicsdisplayconfiguration
            let graphics = VZMacGraphicsDeviceConfiguration()
            graphics.displays = [VZMacGraphicsDisplayConfiguration(widthInPixels: 1920, heightInPixels: 1080, pixelsPerInch: 80)]
            config.graphicsDevices = [graphics]
        case "efi":
            // /vzefibootloader/variablestore, /vzefivariablestore/init(url:), init(creatingvariablestoreat:options:)
            let path = try boot.string("variableStore")
            let url = URL(fileURLWithPath: path)
            let loader = VZEFIBootLoader()
            if boot.bool("create") && !FileManager.default.fileExists(atPath: path) {
                loader.variableStore = try VZEFIVariableStore(creatingVariableStoreAt: url)
            } else {
                loader.variableStore = VZEFIVariableStore(url: url)
            }
            config.bootLoader = loader
            config.platform = VZGenericPlatformConfiguration()  // /vzgenericplatformconfiguration (macOS 13)
        case "linux":
            // /vzlinuxbootloader: kernelURL, initialRamdiskURL, commandLine
            let loader = VZLinuxBootLoader(kernelURL: URL(fileURLWithPath: try boot.string("kernel")))
            if let initrd = boot.optionalString("initrd") { loader.initialRamdiskURL = URL(fileURLWithPath: initrd) }
            loader.commandLine = boot.optionalString("cmdline") ?? ""
            config.bootLoader = loader
            config.platform = VZGenericPlatformConfiguration()
        default:
            throw HelperError.badRequest("boot.kind \(kind) is not macos, efi or linux")
        }
        if kind != "macos" {
            // Entropy for Linux guests only: Tart leaves it out of suspendable macOS guests (save/restore).
            config.entropyDevices = [VZVirtioEntropyDeviceConfiguration()]  // /vzvirtioentropydeviceconfiguration
        }

        // /vzdiskimagestoragedeviceattachment/init(url:readonly:), /vzvirtioblockdeviceconfiguration
        config.storageDevices = try c.objects("disks").map { d in
            let attachment = try VZDiskImageStorageDeviceAttachment(url: URL(fileURLWithPath: try d.string("path")), readOnly: d.bool("readOnly"))
            return VZVirtioBlockDeviceConfiguration(attachment: attachment)
        }

        let net = try c.object("network")
        switch try net.string("mode") {
        case "none":
            config.networkDevices = []
        case "nat", "bridged":
            // /vzvirtionetworkdeviceconfiguration, /vzmacaddress/init(string:)
            let nic = VZVirtioNetworkDeviceConfiguration()
            guard let mac = VZMACAddress(string: try net.string("mac")) else { throw HelperError.badRequest("network.mac is not a MAC address") }
            nic.macAddress = mac
            if try net.string("mode") == "nat" {
                nic.attachment = VZNATNetworkDeviceAttachment()  // /vznatnetworkdeviceattachment
            } else {
                // /vzbridgednetworkinterface/networkinterfaces, /vzbridgednetworkdeviceattachment/init(interface:)
                // Needs the com.apple.vm.networking entitlement, which Apple grants on request only.
                let name = try net.string("interface")
                guard let iface = VZBridgedNetworkInterface.networkInterfaces.first(where: { $0.identifier == name }) else {
                    throw HelperError(name: "NetworkInterfaceNotFound", message: "no bridgeable interface \(name)")
                }
                nic.attachment = VZBridgedNetworkDeviceAttachment(interface: iface)
            }
            config.networkDevices = [nic]
        case let mode:
            throw HelperError.badRequest("network.mode \(mode) is not none, nat or bridged")
        }

        // /vzvirtiofilesystemdeviceconfiguration/init(tag:), /vzshareddirectory/init(url:readonly:),
        // /vzsingledirectoryshare/init(directory:), /vzmultipledirectoryshare/init(directories:),
        // /vzvirtiofilesystemdeviceconfiguration/macosguestautomounttag (macOS 13)
        config.directorySharingDevices = try c.objects("fileSystems").map { fs in
            let device = VZVirtioFileSystemDeviceConfiguration(tag: try fs.string("tag"))
            if try fs.string("kind") == "single" {
                let s = try fs.object("share")
                device.share = VZSingleDirectoryShare(directory: VZSharedDirectory(url: URL(fileURLWithPath: try s.string("hostPath")), readOnly: s.bool("readOnly")))
            } else {
                var dirs: [String: VZSharedDirectory] = [:]
                for s in try fs.objects("shares") {
                    dirs[try s.string("name")] = VZSharedDirectory(url: URL(fileURLWithPath: try s.string("hostPath")), readOnly: s.bool("readOnly"))
                }
                device.share = VZMultipleDirectoryShare(directories: dirs)
            }
            return device
        }

        // /vzvirtiosocketdeviceconfiguration: one device; ports are chosen per connection.
        config.socketDevices = [VZVirtioSocketDeviceConfiguration()]

        // /vzvirtioconsoledeviceserialportconfiguration, /vzfileserialportattachment/init(url:append:)
        if let console = c.optionalString("console") {
            let port = VZVirtioConsoleDeviceSerialPortConfiguration()
            port.attachment = try VZFileSerialPortAttachment(url: URL(fileURLWithPath: console), append: true)
            config.serialPorts = [port]
        }

        try config.validate()  // /vzvirtualmachineconfiguration/validate()
        return config
    }
}

/// The running machine and its delegate. `onState` and `onStopped` report to the server.
final class Machine: NSObject, VZVirtualMachineDelegate {
    let vm: VZVirtualMachine
    var onState: (String) -> Void = { _ in }
    var onStopped: (String, HelperError?) -> Void = { _, _ in }
    var onDeviceError: ([String: Any]) -> Void = { _ in }
    private var stopAsked: String?
    private var observation: NSKeyValueObservation?
    private var proxies: [VsockProxy] = []

    init(config: VZVirtualMachineConfiguration) {
        vm = VZVirtualMachine(configuration: config)  // main queue
        super.init()
        vm.delegate = self
        // VZVirtualMachine.state is key-value observable: /vzvirtualmachine/state-swift.property
        observation = vm.observe(\.state, options: [.new]) { [weak self] vm, _ in
            DispatchQueue.main.async { self?.onState(stateName(vm.state)) }
        }
    }

    /// /vzvirtualmachine/start(completionhandler:), or /restoremachinestatefrom(url:completionhandler:) then resume (macOS 14+).
    func start(restoreFrom: String?, vsock: [Fields], done: @escaping (HelperError?) -> Void) {
        do {
            guard let device = vm.socketDevices.first as? VZVirtioSocketDevice else { throw HelperError(name: "InternalError", message: "no virtio socket device") }
            for v in vsock {
                proxies.append(try VsockProxy(socketPath: try v.string("socket"), port: UInt32(try v.int("port")), device: device, onError: { [weak self] port, err in
                    self?.onDeviceError(["event": "vsock-error", "port": Int(port), "error": err.json])
                }))
            }
        } catch {
            return done(HelperError.from(error))
        }
        guard let restoreFrom else {
            vm.start { result in
                if case .failure(let err) = result { done(HelperError.from(err)) } else { done(nil) }
            }
            return
        }
        guard #available(macOS 14, *) else { return done(HelperError(name: "NotSupported", message: "restore needs macOS 14")) }
        vm.restoreMachineStateFrom(url: URL(fileURLWithPath: restoreFrom)) { [vm] err in
            if let err { return done(HelperError.from(err)) }
            vm.resume { result in
                if case .failure(let err) = result { done(HelperError.from(err)) } else { done(nil) }
            }
        }
    }

    /// /vzvirtualmachine/requeststop(): asks the guest; the guest's own stop is then reported as "requested".
    func requestStop() throws {
        guard vm.canRequestStop else { throw HelperError(name: "InvalidVirtualMachineState", message: "the VM cannot take a stop request in state \(stateName(vm.state))") }
        stopAsked = "requested"
        try vm.requestStop()
    }

    /// /vzvirtualmachine/stop(completionhandler:): destructive, the guest gets no chance.
    func forceStop(done: @escaping (HelperError?) -> Void) {
        guard vm.canStop else { return done(HelperError(name: "InvalidVirtualMachineState", message: "the VM cannot be stopped in state \(stateName(vm.state))")) }
        stopAsked = "forced"
        vm.stop { [weak self] err in
            if let err { return done(HelperError.from(err)) }
            done(nil)
            self?.onStopped("forced", nil)  // stop(completionHandler:) calls no delegate method
        }
    }

    func pause(done: @escaping (HelperError?) -> Void) {
        vm.pause { result in  // /vzvirtualmachine/pause(completionhandler:)
            if case .failure(let err) = result { done(HelperError.from(err)) } else { done(nil) }
        }
    }

    func resume(done: @escaping (HelperError?) -> Void) {
        vm.resume { result in  // /vzvirtualmachine/resume(completionhandler:)
            if case .failure(let err) = result { done(HelperError.from(err)) } else { done(nil) }
        }
    }

    /// /vzvirtualmachine/savemachinestateto(url:completionhandler:) (macOS 14+): the VM must be paused.
    func save(path: String, done: @escaping (HelperError?) -> Void) {
        guard #available(macOS 14, *) else { return done(HelperError(name: "NotSupported", message: "save needs macOS 14")) }
        vm.saveMachineStateTo(url: URL(fileURLWithPath: path)) { err in done(err.map(HelperError.from)) }
    }

    // /vzvirtualmachinedelegate/guestdidstop(_:)
    func guestDidStop(_ virtualMachine: VZVirtualMachine) {
        onStopped(stopAsked ?? "guest", nil)
    }

    // /vzvirtualmachinedelegate/virtualmachine(_:didstopwitherror:)
    func virtualMachine(_ virtualMachine: VZVirtualMachine, didStopWithError error: Error) {
        onStopped("error", HelperError.from(error))
    }

    // /vzvirtualmachinedelegate/virtualmachine(_:networkdevice:attachmentwasdisconnectedwitherror:)
    func virtualMachine(_ virtualMachine: VZVirtualMachine, networkDevice: VZNetworkDevice, attachmentWasDisconnectedWithError error: Error) {
        onDeviceError(["event": "network-disconnected", "error": HelperError.from(error).json])
    }

    func closeProxies() {
        proxies.forEach { $0.close() }
    }
}

/// Host unix socket -> guest vsock port: each accepted connection is connected to the port with
/// /vzvirtiosocketdevice/connect(toport:completionhandler:) and bytes are copied both ways by two threads
/// (the VZVirtioSocketConnection owns its fd and must stay alive until both directions are done).
final class VsockProxy {
    private let listener: UnixListener

    init(socketPath: String, port: UInt32, device: VZVirtioSocketDevice, onError: @escaping (UInt32, HelperError) -> Void) throws {
        listener = try UnixListener(path: socketPath) { client in
            DispatchQueue.main.async {
                device.connect(toPort: port) { result in
                    switch result {
                    case .success(let connection):
                        pump(client, connection.fileDescriptor, keepAlive: connection)
                    case .failure(let err):
                        Darwin.close(client)
                        onError(port, HelperError.from(err))
                    }
                }
            }
        }
    }

    func close() { listener.close() }
}

private func pump(_ a: Int32, _ b: Int32, keepAlive: AnyObject) {
    let group = DispatchGroup()
    for (from, to) in [(a, b), (b, a)] {
        group.enter()
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(from, &buffer, buffer.count)
                if n <= 0 { break }
                var off = 0
                while off < n {
                    let w = buffer.withUnsafeBytes { write(to, $0.baseAddress! + off, n - off) }
                    if w <= 0 { off = n; break }
                    off += w
                }
            }
            shutdown(to, SHUT_WR)
            group.leave()
        }
    }
    group.notify(queue: .main) {
        Darwin.close(a)
        withExtendedLifetime(keepAlive) {}
        (keepAlive as? VZVirtioSocketConnection)?.close()
    }
}
