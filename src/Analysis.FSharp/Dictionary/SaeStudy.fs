/// The SAE study: every architecture, at one width and training budget per benchmark, on three ground truths:
///   a. a toy model of superposition's hidden vectors h = W x (n = 20 features in m = 5 dimensions), per sparsity;
///   b. Sharkey et al.'s synthetic dictionary (512 features in 256 dimensions, about 5 active);
///   c. the toy-language MoE decoder's residual stream, whose tokens carry labelled features, with
///   d. which latents route to which expert.
module MechInterp.Analysis.Dictionary.SaeStudy

open System
open System.Diagnostics
open System.IO
open TorchSharp
open MechInterp.Data
open MechInterp.Hooks
open MechInterp.Model
open MechInterp.ToyModels
open MechInterp.Analysis.Superposition

type Tensor = torch.Tensor

/// The SAE side of one benchmark: width, k, the penalty coefficients, and the training budget.
type BenchmarkSettings =
    { DSae: int
      /// TopK's k and BatchTopK's mean k.
      K: int
      /// λ of the standard SAE's L1 term and of JumpReLU's L0 term.
      StandardLambda: float
      JumpReluLambda: float
      Training: SaeTraining.TrainSettings }

type ToySettings =
    { Setting: Sweep.SweepSetting
      Sae: BenchmarkSettings }

type SyntheticSettings =
    { Dim: int
      Features: int
      MeanActive: float
      Decay: float
      Sae: BenchmarkSettings }

type LanguageSettings =
    { HookName: string
      /// The MoE layer whose routing 4d reads (the one right after the hook).
      Layer: int
      TrainSequences: int
      HeldOutSequences: int
      Sae: BenchmarkSettings
      /// Random directions drawn as a baseline family (as many as latents).
      Seed: int }

type Settings =
    { Architectures: Architecture list
      Toy: ToySettings
      Synthetic: SyntheticSettings
      Language: LanguageSettings
      /// Where the MoE experiment saved its trained model (trained here if missing).
      MoeCheckpoint: string
      /// Where the toy and toy-language SAEs are saved (None: not saved).
      CheckpointDir: string option }

/// One trained SAE on one benchmark, measured.
type Run =
    { Benchmark: string
      Architecture: Architecture
      Sae: Sae
      Metrics: SaeMetrics.Reconstruction
      /// Ground-truth recovery (a, b): MMCS and the Hungarian-matched mean |cosine| over the represented features.
      Mmcs: float
      Matched: float
      TrueFeatures: int
      /// The true L0 of the benchmark's data (a, b).
      TrueL0: float
      Splice: Splice.SpliceScores option
      DeadAtEnd: int
      Seconds: float
      Samples: int64 }

type ToyPoint =
    { Density: float
      Represented: int
      /// W [m, n] of the kept toy model.
      W: float[,]
      Runs: Run list }

type LanguageResult =
    { Runs: Run list
      /// Per architecture, the probing table (c).
      Probes: (Architecture * Probing.ProbeRow list) list
      /// Parent "noun" and its children (the 12 noun tokens), for each architecture.
      Absorption: (Architecture * (Probing.Detection * (string * int * float * float) list * float) option) list
      /// Per architecture: (latent, fires, top expert, top share, baseline share).
      Experts: (Architecture * (int * int * int * float * float) list) list
      Experts': int
      HeldOutTokens: int
      ModelSource: string }

type StudyResult =
    { Settings: Settings
      Toy: ToyPoint list
      Synthetic: Run list
      Language: LanguageResult
      Seconds: float }

/// A float[,] as a float32 tensor of the same shape.
let private matrixTensor (w: float[,]) : Tensor =
    let m, n = Array2D.length1 w, Array2D.length2 w
    torch.tensor(Array.init (m * n) (fun i -> float32 w.[i / n, i % n])).reshape(int64 m, int64 n)

let private benchmarkTraining (b: BenchmarkSettings) (a: Architecture) =
    let lambda =
        match a with
        | Standard -> b.StandardLambda
        | JumpRelu -> b.JumpReluLambda
        | _ -> 0.0
    { b.Training with SparsityCoefficient = lambda }

let private trainOne (log: string -> unit) (b: BenchmarkSettings) (a: Architecture) (dIn: int) hook model (next: int -> Tensor) =
    let config = SaeConfig.create a dIn b.DSae b.K hook model
    SaeTraining.train log (benchmarkTraining b a) config next

let private recovery (truth: Tensor) (sae: Sae) =
    let cos = GroundTruth.cosines truth sae.W_dec
    let rows = Array.init (Array2D.length1 cos) id
    GroundTruth.mmcs cos rows, GroundTruth.matchedMeanAbsCosine cos rows

/// a. Trains the toy models (one batched run, the lowest-loss replicate per density kept), then per density and
/// architecture an SAE on h = W x, scored against the represented features' columns of W.
let runToy (log: string -> unit) (archs: Architecture list) (s: ToySettings) : ToyPoint list =
    log $"toy models: {s.Setting.Name}, densities {s.Setting.Densities}"
    let sweep = Sweep.run log s.Setting
    [ for p in sweep.Points do
          let n, m = s.Setting.Features, s.Setting.Hidden
          let represented = [| for i in 0 .. n - 1 do if p.FeatureNorms.[i] > Metrics.representedThreshold then yield i |]
          use w = matrixTensor p.W                              // [m, n]
          use truth = w.t().index_select(0L, torch.tensor(represented |> Array.map int64)).contiguous()   // [represented, m]
          let k = max 1 (int (ceil (p.Density * float represented.Length)))
          let bench = { s.Sae with K = min k s.Sae.DSae }
          let model = sprintf "toy_model %s 1-S=%g" s.Setting.Name p.Density
          let runs =
              [ for a in archs ->
                    use features = new SyntheticFeatures(n, [| 1.0 - p.Density |], s.Setting.Seed + 100L)
                    let next (batch: int) =
                        use x = features.Sample(batch)                  // [1, batch, n]
                        x.[0].matmul(w.t())                             // h = W x: [batch, m]
                    let trained = trainOne ignore bench a m "hidden" model next
                    use _noGrad = torch.no_grad()
                    use x = next 8192
                    let metrics = SaeMetrics.evaluate trained.Sae x
                    let mmcs, matched = recovery truth trained.Sae
                    log (sprintf "  1-S=%g %-9s k %d: MMCS %.3f, matched %.3f over %d represented, L0 %.2f, EV %.3f (%.1f s)"
                             p.Density (Architecture.name a) bench.K mmcs matched represented.Length metrics.L0 metrics.ExplainedVariance trained.Seconds)
                    { Benchmark = $"toy 1-S={p.Density}"; Architecture = a; Sae = trained.Sae; Metrics = metrics; Mmcs = mmcs; Matched = matched
                      TrueFeatures = represented.Length; TrueL0 = p.Density * float n; Splice = None; DeadAtEnd = trained.DeadAtEnd
                      Seconds = trained.Seconds; Samples = trained.Samples } ]
          yield { Density = p.Density; Represented = represented.Length; W = p.W; Runs = runs } ]

/// b. Sharkey et al.'s synthetic dictionary, every architecture on the same data stream.
let runSynthetic (log: string -> unit) (archs: Architecture list) (s: SyntheticSettings) : Run list =
    [ for a in archs ->
          use data = new SyntheticDictionary(s.Dim, s.Features, s.MeanActive, s.Decay, 7L)
          let trained = trainOne ignore s.Sae a s.Dim "x" "synthetic_dictionary" data.Sample
          use _noGrad = torch.no_grad()
          let codes, x = data.SampleWithCodes 8192
          use codes = codes
          use x = x
          let trueL0 = codes.gt(sc 0.0).sum(-1L).to_type(torch.float64).mean().item<float>()
          let metrics = SaeMetrics.evaluate trained.Sae x
          let mmcs, matched = recovery data.Directions trained.Sae
          log (sprintf "  synthetic %-9s: MMCS %.3f, matched %.3f over %d features, L0 %.2f (true %.2f), EV %.3f, dead %d (%.1f s, %d samples)"
                   (Architecture.name a) mmcs matched s.Features metrics.L0 trueL0 metrics.ExplainedVariance metrics.Dead trained.Seconds trained.Samples)
          { Benchmark = "synthetic"; Architecture = a; Sae = trained.Sae; Metrics = metrics; Mmcs = mmcs; Matched = matched
            TrueFeatures = s.Features; TrueL0 = trueL0; Splice = None; DeadAtEnd = trained.DeadAtEnd; Seconds = trained.Seconds
            Samples = trained.Samples } ]

/// The toy-language MoE the MoE experiment trained (its checkpoint), or one trained here the same way.
let private languageModel (log: string -> unit) (checkpoint: string) =
    if File.Exists checkpoint then HookedTransformer.Load checkpoint, $"{checkpoint} (the moe experiment's trained MoE, seed 0)"
    else
        log $"  {checkpoint} is missing: training the MoE experiment's model (seed 0) here"
        let setup = { MechInterp.Analysis.Experts.MoeStudy.quickSetup with Seeds = [ 0 ] }
        let task = ToyLanguage(setup.SequenceLength)
        let subjects = MechInterp.Analysis.Experts.Subjects.trainAll setup task log
        let _, mine = subjects.[0]
        for KeyValue(kind, (subject, _)) in mine do
            if kind <> MechInterp.Analysis.Experts.Subjects.Trained then subject.Model.Dispose()
        (fst mine.[MechInterp.Analysis.Experts.Subjects.Trained]).Model, "trained here (the moe experiment's quick setup, seed 0)"

let private columns (t: Tensor) : float32[][] =
    // [tokens, candidates] → [candidate][token]
    use c = t.detach().to_type(torch.float32).t().contiguous()
    let flat = c.data<float32>().ToArray()
    let n = int c.shape.[1]
    Array.init (int c.shape.[0]) (fun j -> Array.sub flat (j * n) n)

/// The mean best-latent F1 over the probed feature values, for a family of one probing table.
let meanBestF1 (family: string) (rows: Probing.ProbeRow list) =
    rows |> List.choose (fun r -> r.Best |> List.tryFind (fun (n, _) -> n = family) |> Option.bind snd |> Option.map (fun d -> d.F1)) |> function
    | [] -> nan
    | xs -> List.average xs

/// c and d on the toy-language MoE's residual stream.
let runLanguage (log: string -> unit) (archs: Architecture list) (s: LanguageSettings) (checkpoint: string) : LanguageResult =
    let model, source = languageModel log checkpoint
    use _model = model
    let task = ToyLanguage(model.Config.n_ctx)
    let rng = Random(s.Seed)
    let trainBatches = [ for _ in 1 .. s.TrainSequences / 64 -> task.Sample(64, rng) ]
    use store = ActivationStore.Collect(model, s.HookName, trainBatches |> Seq.map (fun b -> b.Tokens), StoreSettings.inMemory)
    for b in trainBatches do b.Dispose()
    log (sprintf "  toy language: %d activations of %s collected (d_in %d) from %s" store.Rows s.HookName store.DIn source)
    use heldOut = task.Sample(s.HeldOutSequences, Random(s.Seed + 1))
    use _noGrad = torch.no_grad()
    let weightsName, indicesName = HookNames.ExpertWeights s.Layer, HookNames.ExpertIndices s.Layer
    let struct (_, cache) = model.RunWithCache(heldOut.Tokens, (fun n -> n = s.HookName || n = weightsName || n = indicesName))
    use cache = cache
    let x = cache.[s.HookName].reshape(-1L, int64 store.DIn)                       // [tokens, d_model]
    let tokens = int x.shape.[0]
    let expertWeights = cache.[weightsName].reshape(int64 tokens, -1L)   // [tokens, E]
    let chosen = cache.[indicesName].select(-1L, 0L).reshape(-1L).to_type(torch.int64).data<int64>().ToArray() |> Array.map int
    let experts = int expertWeights.shape.[1]
    let labels = heldOut.Labels |> Seq.map (fun kv -> kv.Key, kv.Value.reshape(-1L).data<int64>().ToArray() |> Array.map int) |> Map.ofSeq
    let values = task.Features |> Seq.map (fun kv -> kv.Key, kv.Value) |> Map.ofSeq
    use generator = new torch.Generator(uint64 s.Seed)
    use random = torch.randn([| int64 store.DIn; int64 s.Sae.DSae |], generator = generator)
    use randomUnit = random.div(random.norm(0, true))
    let baselines =
        [ { Probing.Name = "random directions"; Probing.Scores = columns (x.matmul(randomUnit)); Probing.Fires = false }
          { Probing.Name = "residual coordinates"; Probing.Scores = columns x; Probing.Fires = false }
          { Probing.Name = "expert weights"; Probing.Scores = columns expertWeights; Probing.Fires = false } ]
    let tokenIds = heldOut.Tokens.reshape(-1L).data<int64>().ToArray() |> Array.map int
    let nounChildren =
        [ for id in ToyLanguage.FirstNoun .. ToyLanguage.FirstVerb - 1 -> ToyLanguage.TokenName id, tokenIds |> Array.map ((=) id) ]
    let nounLabel = labels.["token_class"] |> Array.map ((=) (Array.IndexOf(ToyLanguage.TokenClasses, "noun")))
    let results =
        [ for a in archs ->
              let trained = trainOne ignore s.Sae a store.DIn s.HookName "toy_language_moe" (store.Sampler(s.Seed + 2))
              let metrics = SaeMetrics.evaluate trained.Sae x
              let splice = Splice.scores model trained.Sae heldOut.Tokens heldOut.LossMask
              let latents = columns (trained.Sae.Encode x)
              // The latents twice: as SAE latents (firing where positive) and, on the baselines' terms, at their best threshold.
              let probes =
                  Probing.probe ({ Probing.Name = "sae"; Probing.Scores = latents; Probing.Fires = true }
                                 :: { Probing.Name = "sae, best threshold"; Probing.Scores = latents; Probing.Fires = false } :: baselines) labels values 20
              let absorption = Probing.absorption latents nounLabel nounChildren
              let shares = Probing.expertShares (Random(s.Seed + 3)) 20 latents chosen experts (max 20 (tokens / 200))
              log (sprintf "  toy language %-9s: L0 %.2f, EV %.3f, CE recovered %.3f, KL recovered %.3f, dead %d; mean best F1 %.3f (random directions %.3f) (%.1f s)"
                       (Architecture.name a) metrics.L0 metrics.ExplainedVariance splice.CeLossRecovered splice.KlRecovered metrics.Dead
                       (meanBestF1 "sae" probes) (meanBestF1 "random directions" probes) trained.Seconds)
              { Benchmark = "toy_language"; Architecture = a; Sae = trained.Sae; Metrics = metrics; Mmcs = nan; Matched = nan
                TrueFeatures = 0; TrueL0 = nan; Splice = Some splice; DeadAtEnd = trained.DeadAtEnd; Seconds = trained.Seconds
                Samples = trained.Samples },
              (a, probes), (a, absorption), (a, shares) ]
    { Runs = results |> List.map (fun (r, _, _, _) -> r)
      Probes = results |> List.map (fun (_, p, _, _) -> p)
      Absorption = results |> List.map (fun (_, _, a, _) -> a)
      Experts = results |> List.map (fun (_, _, _, e) -> e)
      Experts' = experts
      HeldOutTokens = tokens
      ModelSource = source }

/// Saves the toy SAE (best MMCS at the density with the most represented features, ties to the sparser) with the
/// toy model's W [m, n] beside it, and the toy-language SAE with the best mean F1.
let save (dir: string) (r: StudyResult) =
    let toyPoint = r.Toy |> List.maxBy (fun p -> p.Represented, -p.Density)
    let toyRun = toyPoint.Runs |> List.maxBy (fun run -> run.Mmcs)
    let toyDir = Path.Combine(dir, "sae_toy")
    SaeFile.save toyDir toyRun.Sae
    use w = matrixTensor toyPoint.W                           // [m, n]
    MechInterp.IO.SafeTensors.Write(Path.Combine(toyDir, "toy_model.safetensors"), readOnlyDict [ "W", w ],
                                    readOnlyDict [ "description", sprintf "W [m, n] (hidden × features) of %s" toyRun.Sae.Config.ModelName ])
    let probeOf a = r.Language.Probes |> List.find (fun (b, _) -> b = a) |> snd
    let languageRun = r.Language.Runs |> List.maxBy (fun run -> meanBestF1 "sae" (probeOf run.Architecture))
    let languageDir = Path.Combine(dir, "sae_toy_language")
    SaeFile.save languageDir languageRun.Sae
    toyDir, toyRun, languageDir, languageRun

/// Runs a, b, c and d, saving the SAEs when a checkpoint folder is set.
let run (log: string -> unit) (s: Settings) : StudyResult =
    let clock = Stopwatch.StartNew()
    log "a. toy model of superposition"
    let toy = runToy log s.Architectures s.Toy
    log "b. synthetic dictionary"
    let synthetic = runSynthetic log s.Architectures s.Synthetic
    log "c/d. toy-language residual stream"
    let language = runLanguage log s.Architectures s.Language s.MoeCheckpoint
    let result = { Settings = s; Toy = toy; Synthetic = synthetic; Language = language; Seconds = clock.Elapsed.TotalSeconds }
    match s.CheckpointDir with
    | Some dir ->
        let toyDir, _, languageDir, _ = save dir result
        log $"saved {toyDir} and {languageDir}"
    | None -> ()
    result
