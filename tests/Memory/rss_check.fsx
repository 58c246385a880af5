// The resident-set check of a long run (issue 17): trains the --full superposition phase diagram (1,323 instances,
// batch 1,024) for a bounded number of steps and fails if the resident set grows: VmRSS right after each malloc_trim
// (every Allocator.TrimEverySteps steps; the trainer's log line of that step comes after its trim) is what the run
// keeps, and the median of every later quarter of those after warm-up must stay within +10% of the first quarter's.
// A sampler four times a second bounds the peaks: no sample may pass 1.5 times the first quarter's 90th percentile.
// Between two trims the resident set climbs by the steps' temporaries, so a timer's samples land anywhere on the
// sawtooth: a median of them once read 534 then 455 MB on a shrinking run, and their 10th percentile once read
// 439, 498, 468, 501 MB on a run whose post-trim values went 413, 415, 415, 416, 419, 420, 423 MB every 50 steps.
// A leak keeps what it takes, so it raises the post-trim level; the loose bound on the peaks catches one that only
// the temporaries show.
// Too slow for the test command (about a minute), so build.fsx's `rss` target runs it and .ci/run calls that.
//   dotnet fsi tests/Memory/rss_check.fsx [--steps N]
// Without the trim (Native/Allocator.cs) the same steps went from 1.0 GB to 3.5 GB.
#r "nuget: TorchSharp-cpu, 0.107.0"
#r "../../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Core.dll"
#r "../../src/Analysis.FSharp/bin/Release/net10.0/linux-x64/MechInterp.Analysis.dll"

open System
open System.IO
open MechInterp.Analysis
open MechInterp.Analysis.Superposition

MechInterp.Runtime.TorchRuntime.EnsureLoaded()
let args = fsi.CommandLineArgs |> Array.skip 1
let every = MechInterp.Native.Allocator.TrimEverySteps   // every log line falls right after a trim
// Forty trims by default: thirty after the warm-up, enough for four quarters' medians.
let steps =
    match args |> Array.tryFindIndex ((=) "--steps") with
    | Some i -> int args.[i + 1]
    | None -> 40 * every
let warmup = steps / 4

let rssMb () =
    File.ReadAllLines "/proc/self/status"
    |> Array.find (fun l -> l.StartsWith "VmRSS:")
    |> fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0

let samples = ResizeArray<float * float>()   // (seconds, MB)
let keptMb = ResizeArray<float>()            // MB right after each trim past the warm-up
let clock = Diagnostics.Stopwatch.StartNew()
let mutable warmedAt = Double.MaxValue
let sampler = new Threading.Timer((fun _ -> lock samples (fun () -> samples.Add((clock.Elapsed.TotalSeconds, rssMb ())))), null, 0, 250)
let log (line: string) =
    // The trainer logs "step N/M: ..." every LogEvery steps: the warm-up ends at its step.
    let i = line.IndexOf "step "
    if i >= 0 then
        let step = int (line.Substring(i + 5).Split('/').[0])
        if step >= warmup && warmedAt = Double.MaxValue then warmedAt <- clock.Elapsed.TotalSeconds
        let mb = rssMb ()
        if step > warmup then keptMb.Add mb
        if step % 50 = 0 then printfn "rss step %5d  %7.1f MB after the trim  (%.0f s)" step mb clock.Elapsed.TotalSeconds
let full = Experiment.config Report.Full
let phase = { full.Phase with Training = { full.Phase.Training with Steps = steps; LogEvery = every; ConvergenceWindow = steps * 2 } }
printfn "rss check: phase diagram at full scale, %d instances, %d steps, warm-up %d, VmRSS at start %.1f MB"
    (phase.Importances.Length * phase.Densities.Length * phase.Replicates) steps warmup (rssMb ())
let result = PhaseDiagram.run log phase
sampler.Dispose()
let after = lock samples (fun () -> samples |> Seq.filter (fun (t, _) -> t >= warmedAt) |> Seq.map snd |> Array.ofSeq)
let kept = keptMb.ToArray()
if after.Length < 8 || kept.Length < 8 then
    eprintfn "rss check: only %d samples and %d post-trim values after warm-up; run more steps" after.Length kept.Length
    exit 2
let percentile p (xs: float[]) = let s = Array.sort xs in s.[min (s.Length - 1) (int (p * float s.Length))]
let quarters (xs: float[]) =
    let quarter = xs.Length / 4
    Array.init 4 (fun q -> xs.[q * quarter .. (if q = 3 then xs.Length - 1 else (q + 1) * quarter - 1)])
let levels = quarters kept |> Array.map (percentile 0.5)
let peaks = quarters after |> Array.map (percentile 0.9)
let keptGrows = levels |> Array.exists (fun b -> b > 1.1 * levels.[0])
let peakBound = 1.5 * peaks.[0]
let flat = not keptGrows && Array.max after <= peakBound
let show (band: float[]) = String.Join(", ", band |> Array.map (sprintf "%.1f"))
printfn "rss check: %d steps, %d samples after warm-up (step %d), %.1f to %.1f MB (bound %.1f); per quarter, median after the trims %s MB, 90th percentile of the samples %s MB: %s"
    result.StepsRun after.Length warmup (Array.min after) (Array.max after) peakBound (show levels) (show peaks)
    (if flat then "kept level within +10%, peaks within the bound" else "GROWS")
exit (if flat then 0 else 1)
