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
    /// Medians of several bodies timed in turn, one repetition of each per round, so that a load
    /// change on a shared machine hits ours and the baselines alike and their ratio stays honest.
    /// </summary>
    public static double[] MedianMsInterleaved(Action[] bodies, int warmup = 3, int repetitions = 15)
    {
        foreach (var body in bodies)
            for (int i = 0; i < warmup; i++) body();
        var samples = new double[bodies.Length][];
        for (int b = 0; b < bodies.Length; b++) samples[b] = new double[repetitions];
        for (int i = 0; i < repetitions; i++)
            for (int b = 0; b < bodies.Length; b++)
                samples[b][i] = Measure(bodies[b]);
        return samples.Select(Median).ToArray();
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

    private static double Median(double[] samples)
    {
        Array.Sort(samples);
        int n = samples.Length;
        return n % 2 == 1 ? samples[n / 2] : (samples[n / 2 - 1] + samples[n / 2]) / 2;
    }
}

/// <summary>One row of bench.json: speedup = baseline_ms / ours_ms.</summary>
internal sealed record BenchResult(string Case, double OursMs, string Baseline, double BaselineMs)
{
    public double Speedup => BaselineMs / OursMs;
}
