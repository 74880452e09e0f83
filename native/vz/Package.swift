// swift-tools-version:5.9
// vmlet-vz: the Virtualization.framework helper of vmlet's vz driver (one VM per process).
// UNTESTED: written on a Linux host without a Swift toolchain or a Mac; it has never been compiled.
// Build and sign on a Mac with scripts/build-vz-helper.sh.
import PackageDescription

let package = Package(
    name: "vmlet-vz",
    platforms: [.macOS(.v13)],
    targets: [
        .executableTarget(
            name: "vmlet-vz",
            path: "Sources/vmlet-vz",
            linkerSettings: [.linkedFramework("Virtualization")]
        ),
    ]
)
