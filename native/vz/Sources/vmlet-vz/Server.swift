// UNTESTED: never compiled (written without a Mac or a Swift toolchain).
//
// Unix-socket plumbing with POSIX calls: a listener that hands out accepted fds, and a session that reads
// JSON lines from an fd and writes lines back. Sessions are the control socket's connections and stdin/stdout.
import Foundation

final class UnixListener {
    private let fd: Int32
    private let path: String
    private let source: DispatchSourceRead

    init(path: String, onAccept: @escaping (Int32) -> Void) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, SOCK_STREAM, 0)
        guard fd >= 0 else { throw HelperError(name: "HostError", message: "socket(): \(String(cString: strerror(errno)))") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw HelperError(name: "HostError", message: "socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else { throw HelperError(name: "HostError", message: "cannot listen on \(path): \(String(cString: strerror(errno)))") }
        chmod(path, 0o600)  // only vmlet's user reaches the VM
        source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: .main)
        source.setEventHandler { [fd] in
            let client = accept(fd, nil, nil)
            if client >= 0 { onAccept(client) }
        }
        source.resume()
    }

    func close() {
        source.cancel()
        Darwin.close(fd)
        unlink(path)
    }
}

final class Session {
    let readFd: Int32
    let writeFd: Int32
    private var buffer = Data()
    private var source: DispatchSourceRead?
    var onLine: (Session, String) -> Void = { _, _ in }
    var onClose: (Session) -> Void = { _ in }

    init(readFd: Int32, writeFd: Int32) {
        self.readFd = readFd
        self.writeFd = writeFd
        // A peer that went away must not kill the helper (and its VM) with SIGPIPE.
        var on: Int32 = 1
        setsockopt(writeFd, SOL_SOCKET, SO_NOSIGPIPE, &on, socklen_t(MemoryLayout<Int32>.size))
        let source = DispatchSource.makeReadSource(fileDescriptor: readFd, queue: .main)
        source.setEventHandler { [weak self] in self?.readAvailable() }
        self.source = source
        source.resume()
    }

    func send(_ object: [String: Any]) {
        let data = encodeLine(object)
        data.withUnsafeBytes { raw in
            var off = 0
            while off < data.count {
                let n = write(writeFd, raw.baseAddress! + off, data.count - off)
                if n <= 0 { return }
                off += n
            }
        }
    }

    private func readAvailable() {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = read(readFd, &chunk, chunk.count)
        if n <= 0 { return finish() }
        buffer.append(contentsOf: chunk[0..<n])
        while let nl = buffer.firstIndex(of: 0x0a) {
            let line = String(decoding: buffer[buffer.startIndex..<nl], as: UTF8.self)
            buffer.removeSubrange(buffer.startIndex...nl)
            if !line.trimmingCharacters(in: .whitespaces).isEmpty { onLine(self, line) }
        }
        if buffer.count > 1 << 20 { finish() }
    }

    func finish() {
        guard let source else { return }
        self.source = nil
        source.cancel()
        if readFd != STDIN_FILENO { close(readFd) }
        onClose(self)
    }
}
