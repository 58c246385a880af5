/// Do single latents track labelled features? For each feature value of the toy language (token_class = noun,
/// number = plural, ...), the best single SAE latent's F1 (a latent fires where it is positive) and AUROC, against
/// candidates that are not an SAE: random directions, the residual stream's own coordinates and the MoE router's
/// expert weights (each taken with either sign, at its best threshold, which favours them). Also feature
/// absorption (Chanin et al., 2024): positions where the parent's latent is silent while a child's fires.
module MechInterp.Analysis.Dictionary.Probing

open System

/// One candidate family's scores: columns [candidate][token].
type Candidates =
    { Name: string
      Scores: float32[][]
      /// SAE latents fire where positive (F1 at 0); other candidates are directions, scored at their best
      /// threshold with either sign.
      Fires: bool }

/// How well one candidate predicts one binary label.
type Detection =
    { Candidate: int
      F1: float
      Precision: float
      Recall: float
      Auroc: float }

/// AUROC of scores for a binary label, ties counted half (the Mann–Whitney form).
let auroc (scores: float32[]) (label: bool[]) =
    let order = Array.init scores.Length id |> Array.sortBy (fun i -> scores.[i])
    let positives = label |> Array.filter id |> Array.length
    let negatives = label.Length - positives
    if positives = 0 || negatives = 0 then nan
    else
        // Average ranks over runs of equal scores.
        let mutable rankSum = 0.0
        let mutable i = 0
        while i < order.Length do
            let mutable j = i
            while j + 1 < order.Length && scores.[order.[j + 1]] = scores.[order.[i]] do j <- j + 1
            let rank = float (i + j) / 2.0 + 1.0
            for t in i .. j do if label.[order.[t]] then rankSum <- rankSum + rank
            i <- j + 1
        (rankSum - float positives * float (positives + 1) / 2.0) / (float positives * float negatives)

/// F1, precision and recall of "fires where positive".
let firingF1 (scores: float32[]) (label: bool[]) =
    let mutable tp = 0
    let mutable fired = 0
    let mutable positives = 0
    for t in 0 .. scores.Length - 1 do
        let f = scores.[t] > 0.0f
        if f then fired <- fired + 1
        if label.[t] then positives <- positives + 1
        if f && label.[t] then tp <- tp + 1
    let precision = if fired = 0 then 0.0 else float tp / float fired
    let recall = if positives = 0 then nan else float tp / float positives
    let f1 = if fired + positives = 0 then nan else 2.0 * float tp / float (fired + positives)
    f1, precision, recall

/// The best F1 over thresholds "score ≥ t" (and, with `bothSigns`, "score ≤ t"), with its precision and recall.
let bestThresholdF1 (scores: float32[]) (label: bool[]) (bothSigns: bool) =
    let positives = label |> Array.filter id |> Array.length
    if positives = 0 then nan, nan, nan
    else
        let sweep (order: int[]) =
            let mutable best = 0.0, 0.0, 0.0
            let mutable tp = 0
            let mutable i = 0
            while i < order.Length do
                // Take the whole run of equal scores at once: a threshold cannot split ties.
                let mutable j = i
                while j + 1 < order.Length && scores.[order.[j + 1]] = scores.[order.[i]] do j <- j + 1
                for t in i .. j do if label.[order.[t]] then tp <- tp + 1
                let taken = j + 1
                let f1 = 2.0 * float tp / float (taken + positives)
                let (b, _, _) = best
                if f1 > b then best <- f1, float tp / float taken, float tp / float positives
                i <- j + 1
            best
        let descending = Array.init scores.Length id |> Array.sortBy (fun i -> -scores.[i])
        let up = sweep descending
        if bothSigns then
            let down = sweep (Array.rev descending)
            let (a, _, _), (b, _, _) = up, down
            if b > a then down else up
        else up

/// The candidate of a family that best predicts the label (by F1), with its F1, precision, recall and AUROC.
let best (family: Candidates) (label: bool[]) : Detection option =
    if family.Scores.Length = 0 || not (Array.exists id label) || Array.forall id label then None
    else
        let detections =
            family.Scores
            |> Array.mapi (fun c s ->
                let f1, p, r = if family.Fires then firingF1 s label else bestThresholdF1 s label true
                c, f1, p, r)
        let c, f1, p, r = detections |> Array.maxBy (fun (_, f1, _, _) -> if Double.IsNaN f1 then -1.0 else f1)
        let a = auroc family.Scores.[c] label
        Some { Candidate = c; F1 = f1; Precision = p; Recall = r; Auroc = (if family.Fires then a else max a (1.0 - a)) }

/// One row of the probing table: a feature value and each family's best candidate.
type ProbeRow =
    { Feature: string
      Value: string
      Positives: int
      Best: (string * Detection option) list }

/// Every (feature, value) with at least `minPositives` and not all positions, probed by every family.
let probe (families: Candidates list) (labels: Map<string, int[]>) (values: Map<string, string[]>) (minPositives: int) =
    [ for KeyValue(feature, ids) in labels do
          let names = values.[feature]
          for v in 0 .. names.Length - 1 do
              let label = ids |> Array.map (fun x -> x = v)
              let positives = label |> Array.filter id |> Array.length
              if positives >= minPositives && positives < label.Length then
                  yield { Feature = feature; Value = names.[v]; Positives = positives
                          Best = [ for f in families -> f.Name, best f label ] } ]

/// Absorption of a parent label by child labels: the parent's best latent, and per child the share of the
/// child's positions where the parent latent is silent while the child's own best latent (not the parent's)
/// fires. Returns (parent latent, its recall, [(child, positions, parent recall on it, absorbed share)], overall
/// absorbed share of the parent's positions).
let absorption (latents: float32[][]) (parent: bool[]) (children: (string * bool[]) list) =
    let family = { Name = "sae"; Scores = latents; Fires = true }
    match best family parent with
    | None -> None
    | Some p ->
        let parentFires = latents.[p.Candidate] |> Array.map (fun v -> v > 0.0f)
        let perChild =
            [ for name, child in children do
                  let positions = child |> Array.filter id |> Array.length
                  if positions > 0 then
                      let others = { family with Scores = latents |> Array.mapi (fun c s -> if c = p.Candidate then Array.zeroCreate s.Length else s) }
                      let childLatent = best others child
                      let recall = (Array.map2 (fun c f -> c && f) child parentFires |> Array.filter id |> Array.length |> float) / float positions
                      let absorbed =
                          match childLatent with
                          | Some c ->
                              let fires = latents.[c.Candidate]
                              [| for t in 0 .. child.Length - 1 do if child.[t] && not parentFires.[t] && fires.[t] > 0.0f then yield t |].Length
                          | None -> 0
                      yield name, positions, recall, float absorbed / float positions, absorbed ]
        let parentPositions = parent |> Array.filter id |> Array.length
        let absorbedTotal = perChild |> List.sumBy (fun (_, _, _, _, a) -> a)
        Some(p, perChild |> List.map (fun (n, pos, r, share, _) -> n, pos, r, share), float absorbedTotal / float parentPositions)

/// Latents and experts: for each latent firing on at least `minFires` tokens, the share of its firings routed
/// to its most common expert, and the same share for as many tokens drawn at random (the baseline under
/// independence, averaged over `draws`). Returns (latent, fires, top expert, top share, baseline share).
let expertShares (rng: Random) (draws: int) (latents: float32[][]) (expert: int[]) (experts: int) (minFires: int) =
    let topShare (positions: int[]) =
        let counts = Array.zeroCreate experts
        for t in positions do counts.[expert.[t]] <- counts.[expert.[t]] + 1
        let e = Array.findIndex ((=) (Array.max counts)) counts
        e, float counts.[e] / float positions.Length
    [ for c in 0 .. latents.Length - 1 do
          let positions = [| for t in 0 .. expert.Length - 1 do if latents.[c].[t] > 0.0f then yield t |]
          if positions.Length >= minFires then
              let e, share = topShare positions
              let baseline =
                  Array.init draws (fun _ -> snd (topShare (Array.init positions.Length (fun _ -> rng.Next expert.Length))))
                  |> Array.average
              yield c, positions.Length, e, share, baseline ]
