-- Orthanc forwards each stable study holding a chest radiograph to cxrnode, by itself.
--
-- Loaded through "LuaScripts" in docker/orthanc.json; the integration tests run this same file
-- on a native Orthanc (tests/integration/test_orthanc_forwarding.py).
--
-- Sent: the CR/DX instances of chest series (Body Part Examined one the node reads as a
-- chest, or none) that no earlier stable event forwarded and that did not come from the node.
-- So the node's own results (SR, presentation states, captures: stored back by the node's AE
-- title), which make the study stable again, are never sent back to it, and neither are the
-- images it already has; an image added to the study later is sent on its own.
--
-- Each forwarded instance carries the metadata CxrnodeForwarded (declared in "UserMetadata")
-- holding the id of the Orthanc job that sent it. The job runs asynchronously, so a slow node
-- never blocks Orthanc's Lua thread; a job that failed (the node down) stays in Orthanc's job
-- list, and POST /jobs/<id>/resubmit (or Orthanc Explorer) sends it again.

local NODE = 'cxrnode'                -- the node's entry in "DicomModalities"
local FORWARDED = 'CxrnodeForwarded'  -- instance metadata, declared in "UserMetadata"
local RADIOGRAPHS = { CR = true, DX = true }
-- node/dicom/classify.py CHEST_BODY_PARTS, and none at all (assume_chest_without_body_part).
local CHEST = {
  [''] = true, CHEST = true, THORAX = true, LUNG = true, LUNGS = true, CHEST_LAT = true,
  ['PORT CHEST'] = true,
}

local function node_ae_title()
  return ParseJson(RestApiGet('/modalities/' .. NODE .. '/configuration'))['AET']
end

local function is_chest_radiograph(series)
  local tags = series['MainDicomTags']
  local modality = string.upper(tags['Modality'] or '')
  local body_part = string.upper(tags['BodyPartExamined'] or '')
  return RADIOGRAPHS[modality] == true and CHEST[body_part] == true
end

-- The study's chest radiographs that are neither forwarded yet nor the node's own.
local function to_forward(studyId, node)
  local wanted = {}
  for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    if is_chest_radiograph(series) then
      for _, instance in ipairs(series['Instances']) do
        local metadata = ParseJson(RestApiGet('/instances/' .. instance .. '/metadata?expand'))
        if metadata[FORWARDED] == nil and metadata['RemoteAET'] ~= node then
          table.insert(wanted, instance)
        end
      end
    end
  end
  return wanted
end

function OnStableStudy(studyId, tags, metadata)
  local wanted = to_forward(studyId, node_ae_title())
  if #wanted == 0 then
    print('cxrnode: study ' .. studyId .. ': nothing to forward')
    return
  end
  local request = { Resources = wanted, Asynchronous = true }
  local job = ParseJson(RestApiPost('/modalities/' .. NODE .. '/store', DumpJson(request, true)))
  for _, instance in ipairs(wanted) do
    RestApiPut('/instances/' .. instance .. '/metadata/' .. FORWARDED, job['ID'])
  end
  print('cxrnode: study ' .. studyId .. ': forwarding ' .. #wanted .. ' instance(s), job ' .. job['ID'])
end
