/// experiment_1: does forcing the residual stream onto a discrete grid slow or stop learning?
/// The same decoder, task, initializations and data orders; only the quantization after every block differs.
/// Every variant and seed is one instance of a single batched model, so all runs share each step's cost.
module MechInterp.Analysis.Discretization.Experiment1

open System
open TorchSharp
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.Training
open MechInterp.Analysis.Statistics
open MechInterp.Analysis.Residual
open MechInterp.Analysis.Residual.InductionRun
open MechInterp.Analysis.Discretization.Quantization
open MechInterp.Analysis.Discretization.Codebook

/// How a variant discretizes the stream after every block.
type Discretizer =
    /// Each dimension on its own grid of k levels.
    | Grid of Quantizer
    /// The whole vector replaced by the nearest entry of a learned codebook.
    | Codebook of CodebookSettings
    /// Each dimension clamped to [−range, range], straight-through, no rounding: the grids' control.
    | Clamp of range: float

/// One arm of the experiment: no discretizer is the standard model.
type Variant = { Name: string; Discretizer: Discretizer option }

type Experiment1Settings =
    { /// The model, task and step cap; learned means a held-out repeat loss at or under Training.LearnedRepeatLoss.
      Training: InductionSettings
      Seeds: int list
      /// The clamp range c of every quantizer (levels on [−c, c] per dimension).
      Range: float
      StraightThroughLevels: int list
      BlockedLevels: int list
      /// Whether to run the clamp-only control (the grids' clamp and straight-through gradient, no rounding).
      ClampOnly: bool
      /// Codebook sizes of the vector-quantized variants (commitment 0.25, EMA decay 0.99).
      CodebookSizes: int list }

/// What the residual analysis shows in one trained model, on its evaluation batch with its own hooks.
type RunAnalysis =
    { /// max |Σ components − final resid| / max |final resid|: 0 when the stream is a plain sum.
      DecompositionError: float
      BestPreviousToken: int * int * float
      BestInduction: int * int * float
      BestLookBack: int * int * float
      BestShiftedInduction: int * int * float
      /// Logit-lens loss on the repeat after each layer (label, loss).
      LogitLens: (string * float)[]
      /// Codebook variants: per quantized hook, entries used and the perplexity of the assignments on the evaluation batch.
      CodebookUsage: (string * int * float) list }

type SeedRun =
    { Seed: int
      Run: InductionRunResult
      FinalLoss: float
      FinalRepeatLoss: float
      Analysis: RunAnalysis }

    member this.LearnedStep = Option.ofNullable this.Run.Convergence.LearnedStep
    member this.ConvergedStep = Option.ofNullable this.Run.Convergence.ConvergedStep

type VariantResult =
    { Variant: Variant
      Runs: SeedRun list
      FinalLoss: Intervals.Summary
      /// Final loss against the standard variant's (None for the standard variant itself).
      VersusStandard: Significance.Comparison option
      /// Steps to learned against the standard's, runs that never learned censored at the cap.
      LearnedVersusStandard: Survival.LogRank option
      /// One line from the numbers: like the standard, later by X steps, or not within the cap.
      Verdict: string }

type Experiment1Result =
    { Settings: Experiment1Settings
      Variants: VariantResult list
      /// Steps the batch ran (the cap unless every run converged first).
      StepsRun: int
      Seconds: float }

let variants (s: Experiment1Settings) =
    [ yield { Name = "standard"; Discretizer = None }
      for k in s.StraightThroughLevels ->
          { Name = $"ste-k{k}"; Discretizer = Some(Grid { Levels = k; Range = s.Range; Gradient = StraightThrough }) }
      for k in s.BlockedLevels ->
          { Name = $"no-ste-k{k}"; Discretizer = Some(Grid { Levels = k; Range = s.Range; Gradient = Blocked }) }
      if s.ClampOnly then yield { Name = "clamp-only"; Discretizer = Some(Clamp s.Range) }
      for k in s.CodebookSizes ->
          { Name = $"vq-{k}"; Discretizer = Some(Codebook { Size = k; Commitment = 0.25; Decay = 0.99 }) } ]

let isGrid (gradient: GradientPath) (v: Variant) =
    match v.Discretizer with
    | Some(Grid q) -> q.Gradient = gradient
    | _ -> false

let isCodebook (v: Variant) =
    match v.Discretizer with
    | Some(Codebook _) -> true
    | _ -> false

/// A variant's transform of a group of instances' stream [group, batch, pos, d] at one hook, and its codebooks.
type private GroupTransform =
    { Start: int64
      Count: int64
      /// hook name → transformed stream; None leaves the group untouched (the standard variant).
      Apply: (string -> torch.Tensor -> torch.Tensor) option
      /// Codebook variants: one quantizer (a codebook per instance of the group) per quantized hook.
      Codebooks: (string * VectorQuantizer) list }

let private transformOf (variant: Variant) (seeds: int list) (model: HookedTransformer) (start: int) =
    let names = quantizedHookNames model
    let group apply codebooks =
        { Start = int64 start; Count = int64 seeds.Length; Apply = apply; Codebooks = codebooks }
    match variant.Discretizer with
    | None -> group None []
    | Some(Grid q) -> group (Some(fun _ x -> quantize q x)) []
    | Some(Clamp range) -> group (Some(fun _ x -> clamp range x)) []
    | Some(Codebook c) ->
        let books = [ for l, name in List.indexed names -> name, new VectorQuantizer(c, [| for seed in seeds -> seed * 1000 + l |]) ]
        let byName = dict books
        group (Some(fun name x -> byName.[name].Quantize x)) books

/// The whole experiment's intervention on the batched model (instances variant-major): at every block's
/// resid_post each variant's group of instances goes through its own discretizer; the commitment losses of
/// the codebook groups, per instance, are the extra loss.
let private batchIntervention (groups: GroupTransform list) (model: HookedTransformer) : Intervention =
    let names = quantizedHookNames model |> Set.ofList
    let active = groups |> List.exists (fun g -> g.Apply.IsSome)
    let hook =
        Hook(Func<string, bool>(names.Contains), HookFn(fun act hp ->
            torch.cat([| for g in groups ->
                             let part = act.narrow(0L, g.Start, g.Count)
                             match g.Apply with
                             | Some f -> f hp.Name part
                             | None -> part |], 0L)))
    let extra () =
        let pieces =
            [ for g in groups ->
                  let losses = g.Codebooks |> List.choose (fun (_, q) -> q.TakeCommitmentLoss())
                  match losses with
                  | [] -> None, g.Count
                  | ls -> Some(ls |> List.reduce (fun a b -> a + b)), g.Count ]
        if pieces |> List.forall (fun (l, _) -> l.IsNone) then None
        else Some(torch.cat([| for l, n in pieces -> match l with Some t -> t | None -> torch.zeros(n) |], 0L))
    { Hooks = (if active then [| hook |] else [||]); ExtraLoss = extra }

/// Instance `within` of a group as an ordinary model's hooks (for analysing the model alone), and its codebooks.
let private singleHooks (g: GroupTransform) (variant: Variant) (within: int) (model: HookedTransformer) =
    match variant.Discretizer with
    | None -> [||], []
    | Some(Grid q) -> quantizeHooks q model, []
    | Some(Clamp range) -> clampHooks range model, []
    | Some(Codebook _) ->
        let books = [ for name, q in g.Codebooks -> name, q.Select within ]
        let byName = dict books
        [| Hook(Func<string, bool>(byName.ContainsKey),
                HookFn(fun act hp -> (byName.[hp.Name].Quantize(act.unsqueeze 0L)).squeeze 0L)) |], books

/// Decomposition error, best heads and logit lens of a trained model, run with the variant's hooks.
let analyse (s: InductionSettings) (hooks: Hook[]) (codebooks: (string * VectorQuantizer) list)
            (model: HookedTransformer) (dataSeed: int) (snapshot: Snapshot) =
    use _scope = torch.NewDisposeScope()
    use _ = torch.no_grad()
    use batch = evalBatch s dataSeed
    for _, q in codebooks do q.ResetUsage()
    let struct (_, cache) = model.RunWithCache(batch.Tokens, Decomposition.residualFilter model, hooks)
    use cache = cache
    let parts = Decomposition.decomposeResid model cache
    let final = cache.[HookNames.ResidPost(s.Layers - 1)]
    let err = (parts.Stack.sum(0L) - final).abs().max().item<float32>() / final.abs().max().item<float32>()
    let repeated = MechInterp.Data.InductionTask.RepeatMask batch
    { DecompositionError = float err
      BestPreviousToken = HeadScores.best snapshot.PreviousToken
      BestInduction = HeadScores.best snapshot.Induction
      BestLookBack = HeadScores.best snapshot.LookBack
      BestShiftedInduction = HeadScores.best snapshot.ShiftedInduction
      LogitLens = LogitAttribution.logitLensLoss model cache batch.Tokens repeated
      CodebookUsage = [ for name, q in codebooks -> (let used, perplexity = (q.Usage()).[0] in name, used, perplexity) ] }

let private mean (xs: float list) = if xs.IsEmpty then nan else List.average xs

/// The one-line answer for a variant against the standard, from steps to learned (censored at the cap).
let verdict (s: Experiment1Settings) (cap: int) (standard: SeedRun list) (runs: SeedRun list) (test: Survival.LogRank) =
    let n = runs.Length
    let learned = runs |> List.choose (fun r -> r.LearnedStep) |> List.map float
    let baseline = standard |> List.choose (fun r -> r.LearnedStep) |> List.map float
    let criterion = $"held-out repeat loss ≤ {s.Training.LearnedRepeatLoss} nat"
    let p = $"log-rank p = {test.PValue:F3}"
    if learned.IsEmpty then $"does not converge within {cap} steps (0/{n} runs reach {criterion})"
    elif learned.Length < n then
        $"converges in {learned.Length}/{n} runs within {cap} steps (learned at {mean learned:F0} steps on average where it did; the standard at {mean baseline:F0}; {p})"
    elif test.PValue >= 0.05 || baseline.Length < 2 then
        $"converges like the standard (learned at {mean learned:F0} steps on average against {mean baseline:F0}; {p})"
    else
        let d, (lo, hi) = Intervals.differenceCi95 baseline learned
        let word = if d >= 0.0 then "later" else "earlier"
        $"converges {word} by {abs d:F0} steps [95%% interval {lo:F0}, {hi:F0}] ({p})"

/// Trains every variant over every seed as one batched model (large enough for libtorch's threads to pay: the
/// trainer's choice); `log` gets progress lines and one line per run.
let run (s: Experiment1Settings) (log: string -> unit) =
    if s.Seeds.IsEmpty then invalidArg (nameof s) "experiment_1 needs at least one seed"
    let clock = Diagnostics.Stopwatch.StartNew()
    let vs = variants s
    let nSeeds = s.Seeds.Length
    let arms = [ for _ in vs do for seed in s.Seeds -> { ModelSeed = seed; DataSeed = seed } ]
    let groups = ref []
    log (sprintf "  training %d variants × %d seeds as one batched model of %d instances, at most %d steps"
             vs.Length nSeeds arms.Length s.Training.Steps)
    let batched, runs =
        train s.Training arms false log (fun model ->
            groups.Value <- [ for i, v in List.indexed vs -> transformOf v s.Seeds model (i * nSeeds) ]
            batchIntervention groups.Value model)
    use batched = batched
    let cap = s.Training.Steps
    let seedRuns =
        [ for i, v in List.indexed vs ->
              let g = groups.Value.[i]
              v,
              [ for j, seed in List.indexed s.Seeds ->
                    let r = runs.[i * nSeeds + j]
                    use single = batched.Instance(i * nSeeds + j)
                    let hooks, books = singleHooks g v j single
                    let last = List.last r.Snapshots
                    let analysis = analyse s.Training hooks books single seed last
                    for _, q in books do (q :> IDisposable).Dispose()
                    log (sprintf "  %-12s seed %d: final loss %.3f (repeat %.3f), learned at %s, converged at %s"
                             v.Name seed last.Loss last.RepeatLoss
                             (r.Convergence.LearnedStep |> Option.ofNullable |> Option.map string |> Option.defaultValue "never")
                             (r.Convergence.ConvergedStep |> Option.ofNullable |> Option.map string |> Option.defaultValue "never"))
                    { Seed = seed; Run = r; FinalLoss = last.Loss; FinalRepeatLoss = last.RepeatLoss; Analysis = analysis } ] ]
    for g in groups.Value do for _, q in g.Codebooks do (q :> IDisposable).Dispose()
    let standard = seedRuns |> List.head |> snd
    let stepsRun = (List.head standard).Run.StepsRun
    let times (rs: SeedRun list) = rs |> List.map (fun r -> Survival.ofStep r.LearnedStep stepsRun)
    { Settings = s
      Variants =
        [ for v, rs in seedRuns ->
              let losses = rs |> List.map (fun r -> r.FinalLoss)
              let test = Survival.logRank (times standard) (times rs)
              { Variant = v
                Runs = rs
                FinalLoss = Intervals.summarize losses
                VersusStandard =
                    if v.Discretizer.IsNone || nSeeds < 2 then None
                    else Some(Significance.permutationTest (standard |> List.map (fun r -> r.FinalLoss)) losses)
                LearnedVersusStandard = if v.Discretizer.IsNone then None else Some test
                Verdict =
                    if v.Discretizer.IsNone then
                        let learned = rs |> List.filter (fun r -> r.LearnedStep.IsSome) |> List.length
                        $"the baseline: {learned}/{rs.Length} runs learn within {stepsRun} steps"
                    else verdict s stepsRun standard rs test } ]
      StepsRun = stepsRun
      Seconds = clock.Elapsed.TotalSeconds }

/// Mean and 95% interval across seeds of the held-out repeat loss at each snapshot: (steps, means, lows, highs).
let repeatBand (runs: SeedRun list) =
    let curves = runs |> List.map (fun r -> r.Run.Snapshots |> List.map (fun s -> float s.Step, s.RepeatLoss) |> Array.ofList) |> Array.ofList
    let n = curves |> Array.map Array.length |> Array.min
    let summaries = Array.init n (fun i -> Intervals.summarize (curves |> Array.map (fun c -> snd c.[i])))
    Array.init n (fun i -> fst curves.[0].[i]),
    summaries |> Array.map (fun s -> s.Mean),
    summaries |> Array.map (fun s -> fst s.Ci95),
    summaries |> Array.map (fun s -> snd s.Ci95)

/// Mean and 95% interval across seeds of the trailing-window training loss, every `stride` steps:
/// (steps, means, lows, highs).
let lossBand (window: int) (stride: int) (runs: SeedRun list) =
    let curves = runs |> List.map (fun r -> smoothed window r.Run.Losses) |> Array.ofList
    let n = curves |> Array.map Array.length |> Array.min
    let steps = [| for i in stride - 1 .. stride .. n - 1 -> i |]
    let summaries = steps |> Array.map (fun i -> Intervals.summarize (curves |> Array.map (fun c -> c.[i])))
    steps |> Array.map (fun i -> float (i + 1)),
    summaries |> Array.map (fun s -> s.Mean),
    summaries |> Array.map (fun s -> fst s.Ci95),
    summaries |> Array.map (fun s -> snd s.Ci95)

/// Quick: the main job's scale. The cap leaves the standard model (learned at steps 600–700, converged at
/// 1,000–1,100 in a trial run of 5 seeds) room to flatten; the variants are the straight-through grids at the
/// coarsest and a fine level, the clamp control and one codebook (the full scale adds k = 4 and 256 — k = 256
/// ended within 0.001 of the clamp control on every seed — and the blocked-gradient grid).
/// Full: d_model 128 and 8 heads, a longer cap, every grid, the blocked gradient and the 4096-entry codebook.
let quickSettings =
    { Training = { InductionStudy.quickSettings with Steps = 1200; SnapshotEvery = 100; EvalBatchSize = 32 }
      Seeds = [ 0; 1; 2; 3; 4 ]
      Range = 1.0
      StraightThroughLevels = [ 2; 16 ]
      BlockedLevels = []
      ClampOnly = true
      CodebookSizes = [ 256 ] }

let fullSettings =
    { quickSettings with
        Training = { InductionStudy.fullSettings with SnapshotEvery = 100 }
        StraightThroughLevels = [ 2; 4; 16; 256 ]
        BlockedLevels = [ 16 ]
        CodebookSizes = [ 256; 4096 ] }

/// The numbers of experiment1.json.
let toJson (r: Experiment1Result) : Text.Json.Nodes.JsonNode =
    let s = r.Settings
    let finite = InductionStudy.finite
    let head (l, h, score: float) = {| layer = l; head = h; score = finite score |}
    let variant (v: VariantResult) =
        let lo, hi = v.FinalLoss.Ci95
        let steps, means, lows, highs = repeatBand v.Runs
        {| name = v.Variant.Name
           kind = (match v.Variant.Discretizer with None -> "none" | Some(Grid _) -> "grid" | Some(Codebook _) -> "codebook" | Some(Clamp _) -> "clamp")
           levels = (match v.Variant.Discretizer with Some(Grid q) -> Nullable q.Levels | _ -> Nullable())
           codebook_size = (match v.Variant.Discretizer with Some(Codebook c) -> Nullable c.Size | _ -> Nullable())
           straight_through = (match v.Variant.Discretizer with Some(Grid q) -> Nullable(q.Gradient = StraightThrough) | Some(Codebook _) | Some(Clamp _) -> Nullable true | None -> Nullable())
           verdict = v.Verdict
           codebook_usage =
            v.Runs |> List.map (fun run -> run.Analysis.CodebookUsage |> List.map (fun (hook, used, perplexity) -> {| hook = hook; entries_used = used; perplexity = finite perplexity |}))
           seeds = v.Runs |> List.map (fun run -> run.Seed)
           runs = v.Runs.Length
           learned = v.Runs |> List.filter (fun run -> run.LearnedStep.IsSome) |> List.length
           converged = v.Runs |> List.filter (fun run -> run.ConvergedStep.IsSome) |> List.length
           learned_step = v.Runs |> List.map (fun run -> Option.toNullable run.LearnedStep)
           converged_step = v.Runs |> List.map (fun run -> Option.toNullable run.ConvergedStep)
           final_loss = v.Runs |> List.map (fun run -> finite run.FinalLoss)
           final_loss_mean = finite v.FinalLoss.Mean
           final_loss_ci95 = [ finite lo; finite hi ]
           final_repeat_loss = v.Runs |> List.map (fun run -> finite run.FinalRepeatLoss)
           versus_standard =
            v.VersusStandard
            |> Option.map (fun c -> {| difference = finite c.Difference; welch_t = finite c.WelchT; p_value = finite c.PValue; permutations = c.Permutations |})
            |> Option.toObj
           learned_versus_standard =
            v.LearnedVersusStandard
            |> Option.map (fun t -> {| log_rank_chi_square = finite t.ChiSquare; observed_minus_expected = finite t.ObservedMinusExpected; p_value = finite t.PValue; permutations = t.Permutations |})
            |> Option.toObj
           decomposition_error = v.Runs |> List.map (fun run -> finite run.Analysis.DecompositionError)
           best_induction_head = v.Runs |> List.map (fun run -> head run.Analysis.BestInduction)
           best_previous_token_head = v.Runs |> List.map (fun run -> head run.Analysis.BestPreviousToken)
           best_look_back_head = v.Runs |> List.map (fun run -> head run.Analysis.BestLookBack)
           best_shifted_induction_head = v.Runs |> List.map (fun run -> head run.Analysis.BestShiftedInduction)
           logit_lens_repeat_loss = v.Runs |> List.map (fun run -> InductionStudy.labelled run.Analysis.LogitLens)
           repeat_loss_curve =
            {| step = steps; mean = Array.map finite means; ci95_low = Array.map finite lows; ci95_high = Array.map finite highs |} |}
    let node =
        {| learned = $"held-out repeat loss <= {s.Training.LearnedRepeatLoss} nats"
           converged = (criterion s.Training).Describe()
           step_cap = s.Training.Steps
           steps_run = r.StepsRun
           instances_per_step = r.Variants |> List.sumBy (fun v -> v.Runs.Length)
           quantization =
            $"grid: after every block, each residual dimension clamped to [-{s.Range}, {s.Range}] and rounded to k evenly spaced levels (endpoints included); clamp: the same clamp and straight-through gradient without rounding; codebook: after every block, each position's vector replaced by the nearest of K entries (one codebook per block and run, EMA-updated, decay 0.99, initialized from the first batch), straight-through gradient, commitment loss 0.25 * mse(x, sg(q)) added to the gradient (not to the reported loss)"
           final_loss_is = "loss on the seed's fixed held-out batch after the last step, with the variant's quantization"
           significance = "final loss: exact two-sided permutation test of the difference of means against the standard variant; steps to learned: log-rank test against the standard, runs that never learned censored at the last step, p-value by exact relabelling"
           settings = InductionStudy.settingsRecord s.Training
           seconds = r.Seconds
           variants = r.Variants |> List.map variant |}
    match Text.Json.JsonSerializer.SerializeToNode node with
    | null -> invalidOp "the results serialized to null"
    | n -> n
