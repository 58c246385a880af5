namespace MechInterp;

/// <summary>Which implementation of a kernel runs: our native library or its managed TorchSharp twin.</summary>
public enum KernelBackend
{
    /// <summary>Native if the library loads, else Managed with one warning.</summary>
    Auto,
    /// <summary>The C++ library; an error if it is missing.</summary>
    Native,
    /// <summary>Pure TorchSharp.</summary>
    Managed,
}

/// <summary>
/// Process-wide settings, read once from the environment and changeable in code.
/// <c>MECHINTERP_THREADS</c> (default: all cores) and <c>MECHINTERP_KERNELS</c> (auto|native|managed).
/// </summary>
public static class Settings
{
    private static int threads = ReadThreads();

    /// <summary>Threads for libtorch and the native kernels; the one thread setting of the project.</summary>
    public static int Threads
    {
        get => threads;
        set
        {
            if (value < 1)
                throw new ArgumentOutOfRangeException(nameof(value), value, $"Threads must be at least 1, got {value}.");
            threads = value;
            Runtime.ThreadSettings.Apply(value);
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/> with <see cref="Threads"/> set to <paramref name="threads"/>, restoring
    /// the previous value afterwards, also on throw. Small models train faster on one libtorch thread:
    /// intra-op threads do not pay at their sizes, and on a shared machine thread barriers cost far more.
    /// </summary>
    public static T WithThreads<T>(int threads, Func<T> body)
    {
        int before = Threads;
        Threads = threads;
        try { return body(); }
        finally { Threads = before; }
    }

    /// <summary>Which kernel implementation runs.</summary>
    public static KernelBackend Kernels { get; set; } = ReadKernels();

    private static int ReadThreads()
    {
        string? v = Environment.GetEnvironmentVariable("MECHINTERP_THREADS");
        if (string.IsNullOrEmpty(v)) return Environment.ProcessorCount;
        if (int.TryParse(v, out int n) && n >= 1) return n;
        throw new ArgumentException($"MECHINTERP_THREADS must be a positive integer, got '{v}'.");
    }

    private static KernelBackend ReadKernels()
    {
        string? v = Environment.GetEnvironmentVariable("MECHINTERP_KERNELS");
        if (string.IsNullOrEmpty(v)) return KernelBackend.Auto;
        if (Enum.TryParse<KernelBackend>(v, ignoreCase: true, out var k)) return k;
        throw new ArgumentException($"MECHINTERP_KERNELS must be auto, native or managed, got '{v}'.");
    }
}
