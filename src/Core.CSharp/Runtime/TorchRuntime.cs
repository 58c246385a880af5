using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using TorchSharp;

namespace MechInterp.Runtime;

/// <summary>
/// Makes libtorch loadable on the machine we run on. Every entry point (library, tests, FSI
/// scripts, bench, main job) calls <see cref="EnsureLoaded"/> before its first TorchSharp call.
/// </summary>
/// <remarks>
/// TorchSharp-cpu 0.107.0's libLibTorchSharp.so needs GLIBCXX_3.4.32 for a single symbol that is
/// never relocated; Debian 12's libstdc++ stops at 3.4.30. We load a private copy of that library
/// in which the needs the system libstdc++ cannot meet are marked weak, with the libtorch .so
/// files symlinked beside it (its RUNPATH is $ORIGIN). The NuGet cache is never modified.
/// Where the system libstdc++ is new enough, the original library is used as is.
/// </remarks>
public static class TorchRuntime
{
    private const string LibName = "libLibTorchSharp.so";
    private static readonly object Gate = new();
    private static volatile bool loaded;
    private static IntPtr handle;

    /// <summary>True once <see cref="EnsureLoaded"/> has succeeded.</summary>
    public static bool IsLoaded => loaded;

    /// <summary>The handle of the loaded libLibTorchSharp (zero where TorchSharp loaded it itself).</summary>
    internal static IntPtr LibTorchSharpHandle => handle;

    /// <summary>Where the library actually loaded from (the original or the patched copy).</summary>
    public static string? LoadedFrom { get; private set; }

    /// <summary>Idempotent and thread-safe; throws <see cref="TorchLoadException"/> if libtorch cannot load.</summary>
    public static void EnsureLoaded()
    {
        if (loaded) return;
        lock (Gate)
        {
            if (loaded) return;
            if (OperatingSystem.IsLinux())
                LoadOnLinux();
            try
            {
                torch.set_num_threads(Settings.Threads);
                using var probe = torch.ones(2, 2);
                using var product = probe.matmul(probe);
            }
            catch (Exception e) when (e is not TorchLoadException)
            {
                throw new TorchLoadException(
                    $"TorchSharp failed its first call after loading {LoadedFrom ?? "the default libtorch"}: {e.Message}. " +
                    "Check that the TorchSharp-cpu 0.107.0 package restored completely (dotnet restore).", e);
            }
            loaded = true;
        }
    }

    private static void LoadOnLinux()
    {
        var searched = new List<string>();
        string original = FindLibTorchSharp(searched)
            ?? throw new TorchLoadException(
                $"Could not find {LibName}. Looked in: {string.Join(", ", searched)}. " +
                "Run `dotnet restore` so the TorchSharp-cpu 0.107.0 package is in the NuGet cache.");
        string libtorchDir = FindLibTorchDir(Path.GetDirectoryName(original)!, searched)
            ?? throw new TorchLoadException(
                $"Found {original} but not libtorch.so. Looked in: {string.Join(", ", searched)}. " +
                "Run `dotnet restore` so the libtorch-cpu-linux-x64 2.10.0 package is in the NuGet cache.");

        byte[] image = File.ReadAllBytes(original);
        string? stdcxx = FindLibStdCxx();
        var unmet = stdcxx is null
            ? []
            : UnmetNeeds(image, original, File.ReadAllBytes(stdcxx));

        string target = unmet.Count == 0 ? original : WritePatchedCopy(image, original, libtorchDir, unmet);
        try
        {
            handle = NativeLibrary.Load(target);
        }
        catch (Exception e)
        {
            throw new TorchLoadException(
                $"Could not load {target} (libstdc++: {stdcxx ?? "not found"}; weakened needs: " +
                $"{(unmet.Count == 0 ? "none" : string.Join(", ", unmet.Select(n => n.Version)))}): {e.Message}", e);
        }
        LoadedFrom = target;
        try
        {
            NativeLibrary.SetDllImportResolver(typeof(torch).Assembly, Resolve);
        }
        catch (InvalidOperationException)
        {
            // A resolver is already set (another host set one); the library is loaded by soname anyway.
        }
    }

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? path) =>
        name is "LibTorchSharp" or LibName ? handle : IntPtr.Zero;

    internal static List<ElfVersionNeeds.VersionNeed> UnmetNeeds(byte[] image, string path, byte[] stdcxx) =>
        ElfVersionNeeds.Read(image, path)
            .Where(n => n.File == "libstdc++.so.6" && !n.IsWeak && !ElfVersionNeeds.DefinesVersion(stdcxx, n.Version))
            .ToList();

    private static string WritePatchedCopy(byte[] image, string original, string libtorchDir, List<ElfVersionNeeds.VersionNeed> unmet)
    {
        // Keyed by the image and by the libtorch folder: TorchSharp loads libtorch from its own folder,
        // and our symlinks must name those same files, or libtorch is loaded twice and aborts.
        string key = Convert.ToHexString(SHA256.HashData([.. SHA256.HashData(image), .. System.Text.Encoding.UTF8.GetBytes(libtorchDir)]))[..16].ToLowerInvariant();
        string dir = Path.Combine(CacheRoot(), $"libtorchsharp-{key}");
        string copy = Path.Combine(dir, LibName);
        Directory.CreateDirectory(dir);

        foreach (var source in Directory.EnumerateFiles(libtorchDir, "*.so*")
                     .Concat(Directory.EnumerateFiles(Path.GetDirectoryName(original)!, "*.so*")))
        {
            string name = Path.GetFileName(source);
            if (name == LibName) continue;
            string link = Path.Combine(dir, name);
            if (File.Exists(link) || Directory.Exists(link)) continue;
            try { File.CreateSymbolicLink(link, source); }
            catch (IOException) when (File.Exists(link)) { } // another process made it first
        }

        if (!File.Exists(copy))
        {
            ElfVersionNeeds.MarkWeak(image, unmet);
            // Atomic: a concurrent or interrupted run never sees half a library.
            IO.AtomicFile.WriteAllBytes(copy, image);
        }
        return copy;
    }

    private static string CacheRoot()
    {
        string? env = Environment.GetEnvironmentVariable("MECHINTERP_CACHE");
        if (!string.IsNullOrEmpty(env)) return env;
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        string root = !string.IsNullOrEmpty(xdg) ? xdg : Path.Combine(string.IsNullOrEmpty(home) ? Path.GetTempPath() : home, ".cache");
        return Path.Combine(root, "mechinterp");
    }

    private static IEnumerable<string> NuGetRoots()
    {
        string? env = Environment.GetEnvironmentVariable("NUGET_PACKAGES");
        if (!string.IsNullOrEmpty(env)) yield return env;
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        if (!string.IsNullOrEmpty(home)) yield return Path.Combine(home, ".nuget", "packages");
    }

    private static string? FindLibTorchSharp(List<string> searched)
    {
        var dirs = new List<string>();
        string torchDll = typeof(torch).Assembly.Location;
        if (!string.IsNullOrEmpty(torchDll))
        {
            string d = Path.GetDirectoryName(torchDll)!;
            dirs.Add(d);
            dirs.Add(Path.Combine(d, "runtimes", "linux-x64", "native"));
            // In the NuGet cache the assembly sits in lib/net*/, the native library in runtimes/.
            dirs.Add(Path.GetFullPath(Path.Combine(d, "..", "..", "runtimes", "linux-x64", "native")));
        }
        dirs.Add(AppContext.BaseDirectory);
        dirs.Add(Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native"));
        foreach (var root in NuGetRoots())
            dirs.Add(Path.Combine(root, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native"));
        return FirstContaining(dirs, LibName, searched);
    }

    private static string? FindLibTorchDir(string besideLibTorchSharp, List<string> searched)
    {
        var dirs = new List<string> { besideLibTorchSharp, AppContext.BaseDirectory,
            Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native") };
        foreach (var root in NuGetRoots())
        {
            string pkg = Path.Combine(root, "libtorch-cpu-linux-x64");
            if (Directory.Exists(pkg))
                dirs.AddRange(Directory.EnumerateDirectories(pkg).OrderDescending()
                    .Select(v => Path.Combine(v, "runtimes", "linux-x64", "native")));
            else
                dirs.Add(Path.Combine(pkg, "2.10.0", "runtimes", "linux-x64", "native"));
        }
        string? found = FirstContaining(dirs, "libtorch.so", searched);
        return found is null ? null : Path.GetDirectoryName(found);
    }

    private static string? FirstContaining(IEnumerable<string> dirs, string file, List<string> searched)
    {
        foreach (var dir in dirs.Distinct())
        {
            string candidate = Path.Combine(dir, file);
            if (File.Exists(candidate)) return candidate;
            searched.Add(dir);
        }
        return null;
    }

    /// <summary>The libstdc++ this process already uses (the .NET host links it), else the system one.</summary>
    private static string? FindLibStdCxx()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/maps"))
            {
                int at = line.IndexOf('/');
                if (at >= 0 && line.Contains("libstdc++.so.6", StringComparison.Ordinal))
                    return line[at..].Trim();
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        string[] system = ["/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6"];
        return system.FirstOrDefault(File.Exists);
    }
}

/// <summary>libtorch could not be loaded; the message says what was looked for, where, and what to do.</summary>
public sealed class TorchLoadException(string message, Exception? inner = null) : Exception(message, inner);
