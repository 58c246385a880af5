using System.Runtime.InteropServices;

namespace MechInterp.Native;

/// <summary>Whether the native library is here, and which backend a kernel call should use.</summary>
public static class NativeKernels
{
    private static readonly Lazy<string?> unavailableReason = new(Probe);
    private static int warned;

    /// <summary>True when libmechinterp_native loaded and its ABI version matches.</summary>
    public static bool IsAvailable => unavailableReason.Value is null;

    /// <summary>The file libmechinterp_native.so was loaded from (null until a kernel asked for it, or when missing).</summary>
    public static string? LoadedFrom => IsAvailable ? NativeLibraryResolver.LoadedFrom : null;

    /// <summary>Why the native library cannot be used, or null when it can.</summary>
    public static string? UnavailableReason => unavailableReason.Value;

    /// <summary>Whether the AVX2/FMA paths run on this CPU (false when the library is missing).</summary>
    public static bool CpuHasAvx2 => IsAvailable && NativeMethods.mi_cpu_has_avx2() == 1;

    /// <summary>Whether the AVX-512 paths run on this CPU (false when the library is missing).</summary>
    public static bool CpuHasAvx512 => IsAvailable && NativeMethods.mi_cpu_has_avx512() == 1;

    /// <summary>The back end the kernels use now: "avx512", "avx2" or "portable" ("none" when the library is missing).</summary>
    public static string Simd => !IsAvailable ? "none" : NativeMethods.mi_get_simd() switch { 2 => "avx512", 1 => "avx2", _ => "portable" };

    /// <summary>Whether CUDA kernels were compiled into the library.</summary>
    public static bool HasCuda => IsAvailable && NativeMethods.mi_has_cuda() == 1;

    /// <summary>
    /// Resolves a backend choice to "run native?": Managed is false; Native requires the library
    /// (throws if missing); Auto uses it when present and warns once on stderr when it is not.
    /// </summary>
    public static bool ShouldUseNative(KernelBackend choice)
    {
        switch (choice)
        {
            case KernelBackend.Managed:
                return false;
            case KernelBackend.Native:
                if (!IsAvailable)
                    throw new DllNotFoundException($"Kernels are set to Native but the native library is unavailable: {UnavailableReason}");
                return true;
            default:
                if (IsAvailable) return true;
                if (Interlocked.Exchange(ref warned, 1) == 0)
                    Console.Error.WriteLine($"warning: MechInterp native kernels unavailable, using the managed twins ({UnavailableReason}). " +
                                            "Build them with `dotnet fsi build.fsx native`.");
                return false;
        }
    }

    internal static void TrySetThreads(int threads)
    {
        if (IsAvailable) Ensure.Ok(NativeMethods.mi_set_num_threads(threads), nameof(NativeMethods.mi_set_num_threads));
    }

    private static string? Probe()
    {
        NativeLibraryResolver.Install();
        try
        {
            int version = NativeMethods.mi_version();
            if (version != NativeMethods.AbiVersion)
                return $"libmechinterp_native has ABI version {version}, this assembly needs {NativeMethods.AbiVersion}; rebuild it";
            Ensure.Ok(NativeMethods.mi_set_num_threads(Settings.Threads), nameof(NativeMethods.mi_set_num_threads));
            Ensure.Ok(NativeMethods.mi_set_simd(Settings.SimdLevel), nameof(NativeMethods.mi_set_simd));
            return null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or BadImageFormatException)
        {
            return $"libmechinterp_native.so not found or not loadable (searched {string.Join(", ", NativeLibraryResolver.Candidates().Distinct().Take(4))}, ...): {e.Message}";
        }
    }
}
