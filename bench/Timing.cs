using System.Diagnostics;

namespace MechInterp.Bench;

/// <summary>Warm-up, then the median of repeated timings: the only way speed is measured here.</summary>
internal static class Timing
{
    public static double MedianMs(Action body, int warmup = 3, int repetitions = 15)
    {
        for (int i = 0; i < warmup; i++) body();
        var samples = new double[repetitions];
        for (int i = 0; i < repetitions; i++)
        {
            long start = Stopwatch.GetTimestamp();
            body();
            samples[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        return Median(samples);
    }

    /// <summary>
    /// Several bodies timed in turn, one repetition of each per round, so that a load change on a shared machine
    /// hits ours and the baselines alike; the rounds keep every sample, so a ratio can be read per round too.
    /// Each round runs the bodies in a fresh order (a fixed seed, so runs repeat it): in a fixed order a body always
    /// follows the same one and inherits what it left behind (caches full of a large GEMM's matrices, or warm with
    /// shared inputs). In a fixed order our attention forward, always right after the GEMM peak, timed slower than
    /// the forward that also writes the pattern at T256 in three bench runs of four (8.8 against 5.4 ms in one).
    /// </summary>
    public static Rounds Interleaved(Action[] bodies, int warmup = 3, int repetitions = 15)
    {
        foreach (var body in bodies)
            for (int i = 0; i < warmup; i++) body();
        var samples = new double[bodies.Length][];
        for (int b = 0; b < bodies.Length; b++) samples[b] = new double[repetitions];
        var order = Enumerable.Range(0, bodies.Length).ToArray();
        var shuffle = new Random(20261208);
        for (int i = 0; i < repetitions; i++)
        {
            shuffle.Shuffle(order);
            foreach (int b in order) samples[b][i] = Measure(bodies[b]);
        }
        return new Rounds(samples);
    }

    /// <summary>
    /// MECHINTERP_BENCH_CLOCK=cpu measures the process's CPU time instead of wall time: on a machine
    /// shared with other jobs it is far steadier (pair it with MECHINTERP_THREADS=1, where CPU time is work).
    /// </summary>
    private static readonly bool CpuClock = Environment.GetEnvironmentVariable("MECHINTERP_BENCH_CLOCK") == "cpu";

    private static double Measure(Action body)
    {
        if (CpuClock)
        {
            using var process = Process.GetCurrentProcess();
            var before = process.TotalProcessorTime;
            body();
            process.Refresh();
            return (process.TotalProcessorTime - before).TotalMilliseconds;
        }
        long start = Stopwatch.GetTimestamp();
        body();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds;
    }

    internal static double Median(double[] samples) => Quantile(samples, 0.5);

    /// <summary>The q-quantile by linear interpolation between order statistics (the median of an even count is the midpoint).</summary>
    internal static double Quantile(double[] samples, double q)
    {
        var sorted = samples.Order().ToArray();
        double at = q * (sorted.Length - 1);
        int lo = (int)Math.Floor(at), hi = (int)Math.Ceiling(at);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
    }
}

/// <summary>
/// The samples of one interleaved timing, [body][round]. A row's speedup is the ratio of the two bodies' medians; its
/// spread is the interquartile range of the per-round ratios, which pair samples taken moments apart, so a reader
/// sees how far one run's ratio can be trusted (single runs on these shared machines swing by 10-20%).
/// </summary>
internal sealed class Rounds(double[][] samples)
{
    public double Median(int body) => Timing.Median(samples[body]);

    /// <summary>The row "ours against baseline": both bodies' medians and the spread of baseline / ours per round.</summary>
    public BenchResult Compare(string name, int ours, string baseline, int baselineBody) =>
        new(name, Median(ours), baseline, Median(baselineBody),
            Spread.Of(samples[ours].Zip(samples[baselineBody], (o, b) => b / o).ToArray()));

    /// <summary>
    /// The kernel's FLOP rate as a share of the GEMM peak timed in the same rounds (<paramref name="peakBody"/> runs
    /// <see cref="GemmPeak.Step"/>): ours is the kernel's time, the baseline the time its FLOPs would take at the
    /// peak, so the speedup column is the share.
    /// </summary>
    public BenchResult ShareOfPeak(string name, int ours, int peakBody, double flops)
    {
        double AtPeak(double peakMs) => flops / (GemmPeak.Gflops(peakMs) * 1e6);
        return new($"{name}: share of GEMM peak", Median(ours), "its FLOPs at peak", AtPeak(Median(peakBody)),
                   Spread.Of(samples[ours].Zip(samples[peakBody], (o, p) => AtPeak(p) / o).ToArray()));
    }
}

/// <summary>The interquartile range of a row's per-round speedups.</summary>
internal sealed record Spread(double P25, double P75)
{
    public static Spread Of(double[] ratios) => new(Timing.Quantile(ratios, 0.25), Timing.Quantile(ratios, 0.75));
}

/// <summary>One row of bench.json: speedup = baseline_ms / ours_ms; <paramref name="Rounds"/> where the row was timed in rounds.</summary>
internal sealed record BenchResult(string Case, double OursMs, string Baseline, double BaselineMs, Spread? Rounds = null)
{
    public double Speedup => BaselineMs / OursMs;
}
