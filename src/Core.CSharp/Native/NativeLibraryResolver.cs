using System.Reflection;
using System.Runtime.InteropServices;

namespace MechInterp.Native;

/// <summary>
/// Finds libmechinterp_native.so: $MECHINTERP_NATIVE_LIB; beside this assembly or the app, or under their
/// runtimes/linux-x64/native (a consumer's output: the MechInterp.Core package ships it there, and a build without
/// a runtime identifier copies it there); the package's own runtimes/linux-x64/native beside lib/net10.0 (the NuGet
/// cache, as F# Interactive's `#r "nuget: ..."` uses it); then the CMake build folder (build/native/lib) of any
/// folder above, so a repo checkout works unpublished.
/// </summary>
internal static class NativeLibraryResolver
{
    private const string FileName = "libmechinterp_native.so";
    private static readonly string PackageNative = Path.Combine("runtimes", "linux-x64", "native");
    private static int installed;

    /// <summary>The file the native library was loaded from, once it has been.</summary>
    public static string? LoadedFrom { get; private set; }

    public static void Install()
    {
        if (Interlocked.Exchange(ref installed, 1) == 1) return;
        NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
    }

    /// <summary>The candidates, in search order, for error messages and tests.</summary>
    public static IEnumerable<string> Candidates()
    {
        string? env = Environment.GetEnvironmentVariable("MECHINTERP_NATIVE_LIB");
        if (!string.IsNullOrEmpty(env)) yield return env;
        string? here = Path.GetDirectoryName(typeof(NativeLibraryResolver).Assembly.Location);
        foreach (var start in new[] { here, AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            if (string.IsNullOrEmpty(start)) continue;
            yield return Path.Combine(start, FileName);
            yield return Path.Combine(start, PackageNative, FileName);
        }
        // In the NuGet cache the assembly sits in lib/net10.0/, the library in runtimes/linux-x64/native/.
        if (!string.IsNullOrEmpty(here))
            yield return Path.GetFullPath(Path.Combine(here, "..", "..", PackageNative, FileName));
        foreach (var start in new[] { here, AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
        {
            if (string.IsNullOrEmpty(start)) continue;
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                yield return Path.Combine(dir.FullName, "build", "native", "lib", FileName);
        }
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path)
    {
        if (name == "LibTorchSharp") return Runtime.TorchRuntime.LibTorchSharpHandle;
        if (name != NativeMethods.Library) return IntPtr.Zero;
        foreach (var candidate in Candidates().Distinct())
            if (File.Exists(candidate) && NativeLibrary.TryLoad(candidate, out var handle))
            {
                LoadedFrom = candidate;
                return handle;
            }
        return IntPtr.Zero;
    }
}
