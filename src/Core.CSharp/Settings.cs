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
/// <c>MECHINTERP_THREADS</c> (default: all cores), <c>MECHINTERP_KERNELS</c> (auto|native|managed) and
/// <c>MECHINTERP_SIMD</c> (avx512|avx2|portable: the widest back end the native kernels may use).
/// </summary>
public static class Settings
{
    private static int threads = ReadThreads();
    private static bool threadsChosen = Environment.GetEnvironmentVariable("MECHINTERP_THREADS") is { Length: > 0 };

    /// <summary>
    /// Threads for libtorch and the native kernels; the one thread setting of the project. Left at its default
    /// (all cores; <see cref="ThreadsChosen"/> false), a training loop whose steps are too small for intra-op
    /// threads to pay runs on one thread (<see cref="ThreadsForStep"/>); set here or by MECHINTERP_THREADS,
    /// it is used as given everywhere.
    /// </summary>
    public static int Threads
    {
        get => threads;
        set
        {
            // Checked before anything changes: a rejected count must leave libtorch, the kernels and this setting as they were.
            CheckThreads(value, nameof(Threads));
            Runtime.ThreadSettings.Apply(value);
            threads = value;
            threadsChosen = true;
        }
    }

    /// <summary>The most threads the setting accepts (the native kernels' pool limit).</summary>
    public const int MaxThreads = 4096;

    private static void CheckThreads(int value, string what)
    {
        if (value < 1 || value > MaxThreads)
            throw new ArgumentOutOfRangeException(what, value, $"{what} must be in [1, {MaxThreads}], got {value}.");
    }

    /// <summary>Whether the thread count was set (in code or by MECHINTERP_THREADS) rather than left at its default.</summary>
    public static bool ThreadsChosen => threadsChosen;

    /// <summary>
    /// Below this many parameter-token products per training step (parameters × tokens, all instances), libtorch's
    /// intra-op threads cost more than they give: the quick induction model (41k parameters × 1,056 tokens) steps in
    /// 20 ms on one thread and 28 ms on two, while five of them batched (2.2e8) already step faster on two.
    /// </summary>
    public const double SmallStepWork = 1e8;

    /// <summary>
    /// The threads a training loop of the given work per step (parameters × tokens) runs on: Threads when it was
    /// chosen, else one thread below <see cref="SmallStepWork"/> and all cores above it.
    /// </summary>
    public static int ThreadsForStep(double work) => ThreadsForStep(work, threadsChosen, threads);

    internal static int ThreadsForStep(double work, bool chosen, int count) => chosen || work >= SmallStepWork ? count : 1;

    /// <summary>
    /// Runs <paramref name="body"/> with libtorch and the native kernels on <paramref name="count"/> threads without
    /// changing the setting (a training loop's choice), restoring the setting's count afterwards, also on throw.
    /// </summary>
    internal static T RunOnThreads<T>(int count, Func<T> body)
    {
        if (count == threads) return body();
        CheckThreads(count, "thread count");
        Runtime.ThreadSettings.Apply(count);
        try { return body(); }
        finally { Runtime.ThreadSettings.Apply(threads); }
    }

    /// <summary>
    /// Runs <paramref name="body"/> with <see cref="Threads"/> set to <paramref name="threads"/>, restoring
    /// the previous value afterwards, also on throw. Small models train faster on one libtorch thread:
    /// intra-op threads do not pay at their sizes, and on a shared machine thread barriers cost far more.
    /// </summary>
    public static T WithThreads<T>(int threads, Func<T> body)
    {
        int before = Threads;
        bool chosen = threadsChosen;
        Threads = threads;
        try { return body(); }
        finally
        {
            Threads = before;
            threadsChosen = chosen;
        }
    }

    /// <summary>Which kernel implementation runs.</summary>
    public static KernelBackend Kernels { get; set; } = ReadKernels();

    /// <summary>
    /// The widest back end the native kernels may use: 2 AVX-512 (the default), 1 AVX2, 0 the portable loops; each runs
    /// only where the CPU has it, else the next narrower one does. Read once from MECHINTERP_SIMD, for comparisons.
    /// </summary>
    public static int SimdLevel { get; } = ParseSimd(Environment.GetEnvironmentVariable("MECHINTERP_SIMD"));

    internal static int ParseSimd(string? v) =>
        v?.ToLowerInvariant() switch
        {
            null or "" or "avx512" => 2,
            "avx2" => 1,
            "portable" => 0,
            _ => throw new ArgumentException($"MECHINTERP_SIMD must be avx512, avx2 or portable, got '{v}'."),
        };

    private static int ReadThreads()
    {
        string? v = Environment.GetEnvironmentVariable("MECHINTERP_THREADS");
        if (string.IsNullOrEmpty(v)) return Environment.ProcessorCount;
        if (int.TryParse(v, out int n) && n >= 1 && n <= MaxThreads) return n;
        throw new ArgumentException($"MECHINTERP_THREADS must be an integer in [1, {MaxThreads}], got '{v}'.");
    }

    private static KernelBackend ReadKernels()
    {
        string? v = Environment.GetEnvironmentVariable("MECHINTERP_KERNELS");
        if (string.IsNullOrEmpty(v)) return KernelBackend.Auto;
        if (Enum.TryParse<KernelBackend>(v, ignoreCase: true, out var k)) return k;
        throw new ArgumentException($"MECHINTERP_KERNELS must be auto, native or managed, got '{v}'.");
    }
}
