// The resident-set check of a long run (issue 17): trains the --full superposition phase diagram (1,323 instances,
// batch 1,024) for a bounded number of steps, samples VmRSS four times a second, and fails if the resident set grows:
// the 10th percentile of every later quarter of the run after warm-up (the trough: what the run keeps) must stay
// within +10% of the first quarter's, and no sample may pass 1.5 times the first quarter's 90th percentile. Between
// two malloc_trim calls, every 10 steps, the resident set swings between that trough and a peak (the steps'
// temporaries). A median of the sawtooth lands on either side by chance (CI once saw 534 then 455 MB and called a
// shrinking run "not flat"), and the peak band swings with where the trims fall: +22% and +14% in two runs that
// kept a flat trough (+7%, +5%), one of them at the commit a passing CI run had checked. A leak keeps what it takes,
// so it raises the trough; the loose bound on the peaks catches one that only the temporaries show.
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
let steps =
    match args |> Array.tryFindIndex ((=) "--steps") with
    | Some i -> int args.[i + 1]
    | None -> 400
let warmup = steps / 4
let every = 25

let rssMb () =
    File.ReadAllLines "/proc/self/status"
    |> Array.find (fun l -> l.StartsWith "VmRSS:")
    |> fun l -> float (l.Split(' ', StringSplitOptions.RemoveEmptyEntries).[1]) / 1024.0

let samples = ResizeArray<float * float>()   // (seconds, MB)
let clock = Diagnostics.Stopwatch.StartNew()
let mutable warmedAt = Double.MaxValue
let sampler = new Threading.Timer((fun _ -> lock samples (fun () -> samples.Add((clock.Elapsed.TotalSeconds, rssMb ())))), null, 0, 250)
let log (line: string) =
    // The trainer logs "step N/M: ..." every LogEvery steps: the warm-up ends at its step.
    let i = line.IndexOf "step "
    if i >= 0 then
        let step = int (line.Substring(i + 5).Split('/').[0])
        if step >= warmup && warmedAt = Double.MaxValue then warmedAt <- clock.Elapsed.TotalSeconds
        printfn "rss step %5d  %7.1f MB  (%.0f s)" step (rssMb ()) clock.Elapsed.TotalSeconds
let full = Experiment.config Report.Full
let phase = { full.Phase with Training = { full.Phase.Training with Steps = steps; LogEvery = every; ConvergenceWindow = steps * 2 } }
printfn "rss check: phase diagram at full scale, %d instances, %d steps, warm-up %d, VmRSS at start %.1f MB"
    (phase.Importances.Length * phase.Densities.Length * phase.Replicates) steps warmup (rssMb ())
let result = PhaseDiagram.run log phase
sampler.Dispose()
let after = lock samples (fun () -> samples |> Seq.filter (fun (t, _) -> t >= warmedAt) |> Seq.map snd |> Array.ofSeq)
if after.Length < 8 then
    eprintfn "rss check: only %d samples after warm-up; run more steps" after.Length
    exit 2
let quarter = after.Length / 4
let percentile p (xs: float[]) = let s = Array.sort xs in s.[min (s.Length - 1) (int (p * float s.Length))]
let quarters = Array.init 4 (fun q -> after.[q * quarter .. (if q = 3 then after.Length - 1 else (q + 1) * quarter - 1)])
let troughs = quarters |> Array.map (percentile 0.1)
let peaks = quarters |> Array.map (percentile 0.9)
let troughGrows = troughs |> Array.exists (fun b -> b > 1.1 * troughs.[0])
let peakBound = 1.5 * peaks.[0]
let flat = not troughGrows && Array.max after <= peakBound
let show (band: float[]) = String.Join(", ", band |> Array.map (sprintf "%.1f"))
printfn "rss check: %d steps, %d samples after warm-up (step %d), %.1f to %.1f MB (bound %.1f); per quarter, 10th percentiles %s MB, 90th percentiles %s MB: %s"
    result.StepsRun after.Length warmup (Array.min after) (Array.max after) peakBound (show troughs) (show peaks)
    (if flat then "trough within +10%, peaks within the bound" else "GROWS")
exit (if flat then 0 else 1)
