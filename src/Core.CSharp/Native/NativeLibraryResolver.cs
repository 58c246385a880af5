using System.Reflection;
using System.Runtime.InteropServices;

namespace MechInterp.Native;

/// <summary>
/// Finds libmechinterp_native.so: $MECHINTERP_NATIVE_LIB, then beside this assembly, then in the
/// CMake build folder (build/native/lib) of any folder above it, so a repo checkout works unpublished.
/// </summary>
internal static class NativeLibraryResolver
{
    private const string FileName = "libmechinterp_native.so";
    private static int installed;

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
                return handle;
        return IntPtr.Zero;
    }
}
