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
            {
                long start = Stopwatch.GetTimestamp();
                bodies[b]();
                samples[b][i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            }
        return samples.Select(Median).ToArray();
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
