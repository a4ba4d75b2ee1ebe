#!/usr/bin/env node
// Instance Availability Notification SCP (PS3.4 Annex R) on dcmjs-dimse: an
// independent peer for kuva's IAN SCU. It accepts the IAN SOP Class and
// Verification, answers every N-CREATE with --status (default Success) and
// prints one JSON line per N-CREATE on stdout:
//   {"affected_sop_instance_uid": ..., "study": ..., "sop_class": ...,
//    "instances": {sopInstanceUid: availability}, "retrieve_ae": {sopInstanceUid: ae}}
// after a first {"listening": port} line.
//
//   node ian_scp.js --port 11112 --ae DCMJSIAN [--status 0x0110]
'use strict';

const dcmjsDimse = require('dcmjs-dimse');

const { Server, Scp, log } = dcmjsDimse;
const { CEchoResponse, NCreateResponse } = dcmjsDimse.responses;
const { Status, PresentationContextResult, RejectResult, RejectSource, RejectReason, SopClass } =
  dcmjsDimse.constants;

const INSTANCE_AVAILABILITY_NOTIFICATION = '1.2.840.10008.5.1.4.33';
const IMPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2';
const EXPLICIT_VR_LITTLE_ENDIAN = '1.2.840.10008.1.2.1';

function parseArgs(argv) {
  const args = { port: 11112, ae: 'DCMJSIAN', status: Status.Success };
  for (let i = 0; i < argv.length; i += 2) {
    const [name, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${name} needs a value`);
    if (name === '--port') args.port = Number(value);
    else if (name === '--ae') args.ae = value;
    else if (name === '--status') args.status = Number(value); // "0x0110" or decimal
    else throw new Error(`unknown option ${name}`);
    if (Number.isNaN(args.port) || Number.isNaN(args.status)) throw new Error(`bad ${name}`);
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));

// dcmjs-dimse logs through loglevel to stdout; keep stdout for the JSON lines.
log.setLevel('silent');

// dcmjs naturalizes a sequence as an array of items (a lone item may come as an object).
function items(sequence) {
  if (sequence === undefined || sequence === null) return [];
  return Array.isArray(sequence) ? sequence : [sequence];
}

function single(value) {
  return Array.isArray(value) ? value.join('\\') : value;
}

function report(request) {
  const dataset = request.getDataset();
  const elements = dataset ? dataset.getElements() : {};
  const instances = {};
  const retrieveAe = {};
  for (const series of items(elements.ReferencedSeriesSequence)) {
    for (const item of items(series.ReferencedSOPSequence)) {
      const uid = single(item.ReferencedSOPInstanceUID);
      instances[uid] = single(item.InstanceAvailability);
      retrieveAe[uid] = single(item.RetrieveAETitle);
    }
  }
  return {
    affected_sop_instance_uid: request.getAffectedSopInstanceUid(),
    sop_class: request.getAffectedSopClassUid(),
    study: single(elements.StudyInstanceUID),
    instances,
    retrieve_ae: retrieveAe,
  };
}

class IanScp extends Scp {
  associationRequested(association) {
    if (association.getCalledAeTitle() !== args.ae) {
      this.sendAssociationReject(
        RejectResult.Permanent,
        RejectSource.ServiceUser,
        RejectReason.CalledAeNotRecognized
      );
      return;
    }
    for (const { context } of association.getPresentationContexts()) {
      const abstract = context.getAbstractSyntaxUid();
      if (abstract !== INSTANCE_AVAILABILITY_NOTIFICATION && abstract !== SopClass.Verification) {
        context.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
        continue;
      }
      const proposed = context.getTransferSyntaxUids();
      const accepted = [EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN].find((ts) =>
        proposed.includes(ts)
      );
      if (accepted) context.setResult(PresentationContextResult.Accept, accepted);
      else context.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
    }
    this.sendAssociationAccept();
  }

  associationReleaseRequested() {
    this.sendAssociationReleaseResponse();
  }

  cEchoRequest(request, callback) {
    const response = CEchoResponse.fromRequest(request);
    response.setStatus(Status.Success);
    callback(response);
  }

  nCreateRequest(request, callback) {
    process.stdout.write(JSON.stringify(report(request)) + '\n');
    const response = NCreateResponse.fromRequest(request);
    response.setStatus(args.status);
    callback(response);
  }
}

const server = new Server(IanScp);
server.on('listening', () => {
  // The Server keeps its net.Server as .server; with --port 0 that knows the real port.
  const address = server.server && server.server.address ? server.server.address() : null;
  process.stdout.write(JSON.stringify({ listening: address ? address.port : args.port }) + '\n');
});
server.on('networkError', (e) => {
  process.stderr.write(`network error: ${e.message}\n`);
});
server.listen(args.port);

function stop() {
  server.close();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
