/* Standalone probe, not part of the build.
 * A plain read against the f32 1x8 tile on eight skewed streams and on the `Panels` layout
 * (docs/BENCHMARKS.md, Zen 4).
 *
 *     gcc -O3 -march=znver3 benches/probes/f32_read.c -o /tmp/f32_read && /tmp/f32_read
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#ifndef K
#define K 1024
#endif
static float X[K] __attribute__((aligned(64)));
volatile float sink;
static float seq(const float*p,size_t n){__m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;
 for(size_t i=0;i+32<=n;i+=32){a0=_mm256_add_ps(a0,_mm256_loadu_ps(p+i));a1=_mm256_add_ps(a1,_mm256_loadu_ps(p+i+8));a2=_mm256_add_ps(a2,_mm256_loadu_ps(p+i+16));a3=_mm256_add_ps(a3,_mm256_loadu_ps(p+i+24));}
 a0=_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3));float o[8];_mm256_storeu_ps(o,a0);return o[0]+o[7];}
static float streams(const float*w,size_t panels,size_t s){__m256 acc[8];float tot=0;
 for(size_t q=0;q<panels;q++){const float*r=w+q*K;for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=8){__m256 x=_mm256_load_ps(X+c);for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x,_mm256_loadu_ps(r+j*s+c),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);tot+=o[0];}
 return tot;}
static float panels16(const float*w,size_t np){__m256 acc[8];float tot=0;
 for(size_t q=0;q<np;q++){const float*p=w+q*8*K;for(int j=0;j<8;j++)acc[j]=_mm256_setzero_ps();
  for(int c=0;c<K;c+=16){const float*ch=p+c*8;__m256 x0=_mm256_load_ps(X+c),x1=_mm256_load_ps(X+c+8);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x0,_mm256_loadu_ps(ch+j*16),acc[j]);
   for(int j=0;j<8;j++)acc[j]=_mm256_fmadd_ps(x1,_mm256_loadu_ps(ch+j*16+8),acc[j]);}
  for(int j=1;j<8;j++)acc[0]=_mm256_add_ps(acc[0],acc[j]);float o[8];_mm256_storeu_ps(o,acc[0]);tot+=o[0];}
 return tot;}
int main(){size_t bytes=(size_t)512<<20;char*buf=mmap(0,bytes,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);madvise(buf,bytes,MADV_HUGEPAGE);
 float*f=(float*)buf;for(size_t i=0;i<bytes/4;i++)f[i]=1.0f/(1+(i&1023));for(int i=0;i<K;i++)X[i]=1.0f/(i+1);
 size_t np=(bytes/4-8*33*16)/(8*K);const char*nm[]={"seq read","f32 streams 1x8","f32 panels 1x8"};double best[3]={0};
 for(int it=0;it<6;it++)for(int m=0;m<3;m++){double t0=now();float r=m==0?seq(f,bytes/4):m==1?streams(f,np,np*K+33*16):panels16(f,np);sink+=r;double g=bytes/(now()-t0)/1e9;if(g>best[m])best[m]=g;}
 for(int m=0;m<3;m++)printf("%s: %.1f GB/s\n",nm[m],best[m]);}
